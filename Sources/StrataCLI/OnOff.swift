import ArgumentParser

/// A switch given as `on` or `off`, as QEMU's options take them.
enum OnOff: String, ExpressibleByArgument, CaseIterable {
    case on
    case off
}
