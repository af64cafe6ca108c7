/// qemu-io's command table, as far as `strata io` implements it: names, aliases, argument
/// counts (options included, as qemu-io counts them) and help lines.
extension IoInterpreter {
    static let commands: [Command] = [
        Command(name: "aio_flush", alias: nil, minArguments: 0, maxArguments: 0, writes: false, usage: "",
                summary: "completes all outstanding aio requests") { await $0.aioFlush($1) },
        Command(name: "aio_read", alias: nil, minArguments: 2, maxArguments: -1, writes: false, usage: "[-Cqv] [-P pattern] off len [len..]",
                summary: "asynchronously reads a number of bytes") { await $0.aioRead($1) },
        Command(name: "aio_write", alias: nil, minArguments: 2, maxArguments: -1, writes: true, usage: "[-Cfquz] [-P pattern] off len [len..]",
                summary: "asynchronously writes a number of bytes") { await $0.aioWrite($1) },
        Command(name: "alloc", alias: nil, minArguments: 1, maxArguments: 2, writes: false, usage: "offset [count]",
                summary: "checks if offset is allocated in the file") { await $0.alloc($1) },
        Command(name: "break", alias: nil, minArguments: 2, maxArguments: 2, writes: false, usage: "event tag",
                summary: "sets a breakpoint on event and tags the stopped request as tag") { await $0.breakAt($1) },
        Command(name: "discard", alias: "d", minArguments: 2, maxArguments: -1, writes: true, usage: "[-Cq] off len",
                summary: "discards a number of bytes at a specified offset") { await $0.discard($1) },
        Command(name: "flush", alias: "f", minArguments: 0, maxArguments: 0, writes: false, usage: "",
                summary: "flush all in-core file state to disk") { await $0.flush($1) },
        Command(name: "help", alias: "?", minArguments: 0, maxArguments: 1, writes: false, usage: "[command]",
                summary: "help for one or all commands") { $0.help($1) },
        Command(name: "info", alias: "i", minArguments: 0, maxArguments: 0, writes: false, usage: "",
                summary: "prints information about the current file") { $0.info($1) },
        Command(name: "length", alias: "l", minArguments: 0, maxArguments: 0, writes: false, usage: "",
                summary: "gets the length of the current file") { $0.length($1) },
        Command(name: "map", alias: nil, minArguments: 0, maxArguments: 0, writes: false, usage: "",
                summary: "prints the allocated areas of a file") { await $0.map($1) },
        Command(name: "quit", alias: "q", minArguments: 0, maxArguments: 0, writes: false, usage: "",
                summary: "exit the program") { interpreter, _ in interpreter.requestQuit(); return true },
        Command(name: "read", alias: "r", minArguments: 2, maxArguments: -1, writes: false, usage: "[-bCqv] [-P pattern [-s off] [-l len]] off len",
                summary: "reads a number of bytes at a specified offset") { await $0.read($1) },
        Command(name: "readv", alias: nil, minArguments: 2, maxArguments: -1, writes: false, usage: "[-Cqv] [-P pattern] off len [len..]",
                summary: "reads a number of bytes at a specified offset") { await $0.readv($1) },
        Command(name: "remove_break", alias: nil, minArguments: 1, maxArguments: 1, writes: false, usage: "tag",
                summary: "remove a breakpoint by tag") { await $0.removeBreak($1) },
        Command(name: "resume", alias: nil, minArguments: 1, maxArguments: 1, writes: false, usage: "tag",
                summary: "resumes the request tagged as tag") { await $0.resumeBreak($1) },
        Command(name: "truncate", alias: "t", minArguments: 1, maxArguments: 3, writes: true, usage: "[-m prealloc_mode] off",
                summary: "truncates the current file at the given offset") { await $0.truncate($1) },
        Command(name: "wait_break", alias: nil, minArguments: 1, maxArguments: 1, writes: false, usage: "tag",
                summary: "waits for the suspension of a request") { await $0.waitBreak($1) },
        Command(name: "write", alias: "w", minArguments: 2, maxArguments: -1, writes: true, usage: "[-bcCfnquz] [-P pattern] off len",
                summary: "writes a number of bytes at a specified offset") { await $0.write($1) },
        Command(name: "writev", alias: nil, minArguments: 2, maxArguments: -1, writes: true, usage: "[-Cfq] [-P pattern] off len [len..]",
                summary: "writes a number of bytes at a specified offset") { await $0.writev($1) },
    ]

    func help(_ arguments: [String]) -> Bool {
        if let name = arguments.first {
            guard let command = Self.commands.first(where: { $0.name == name || $0.alias == name }) else {
                out("command \(name) not found")
                return false
            }
            out("\(command.name) \(command.usage) -- \(command.summary)")
            return true
        }
        for command in Self.commands { out("\(command.name) \(command.usage) -- \(command.summary)") }
        out("\nUse 'help commandname' for extended help.")
        return true
    }
}
