/// Lets convert's workers write their chunks in source order (qemu-img convert without -W):
/// a worker waits until every earlier chunk has been written.
actor ConvertWriteOrder {
    private var nextToWrite = 0
    private var waiting: [Int: CheckedContinuation<Void, Never>] = [:]

    func waitForTurn(_ index: Int) async {
        if index == nextToWrite { return }
        await withCheckedContinuation { waiting[index] = $0 }
    }

    func finished(_ index: Int) {
        nextToWrite = index + 1
        waiting.removeValue(forKey: nextToWrite)?.resume()
    }
}
