#!/usr/bin/env python3
"""Writes a counter alternately to two NBD exports, each write acknowledged before the next:
i to export A, then i to export B, for i = 1, 2, ... A 512-byte block at offset 0 holds i as
8 little-endian bytes. Runs until STOPFILE exists; writes the last i written to both to
PROGRESS after every round (so a caller can wait for progress) and at exit.

Usage: alternating_writer.py SOCKET EXPORT_A EXPORT_B PROGRESS STOPFILE

A minimal fixed-newstyle client (NBD_OPT_EXPORT_NAME, simple replies): doc/proto.md.
"""
import os
import socket
import struct
import sys

SOCKET, EXPORT_A, EXPORT_B, PROGRESS, STOPFILE = sys.argv[1:6]


def receive(sock, count):
    data = b""
    while len(data) < count:
        chunk = sock.recv(count - len(data))
        if not chunk:
            raise EOFError("server closed the connection")
        data += chunk
    return data


def connect(export):
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.connect(SOCKET)
    magic, option_magic, flags = struct.unpack(">QQH", receive(sock, 18))
    assert magic == 0x4E42444D41474943 and option_magic == 0x49484156454F5054, "not a newstyle server"
    no_zeroes = flags & 2
    sock.sendall(struct.pack(">I", 1 | (2 if no_zeroes else 0)))
    name = export.encode()
    sock.sendall(struct.pack(">QII", 0x49484156454F5054, 1, len(name)) + name)
    receive(sock, 10 + (0 if no_zeroes else 124))
    return sock


def write(sock, cookie, value):
    block = struct.pack("<Q", value) + bytes(504)
    sock.sendall(struct.pack(">IHHQQI", 0x25609513, 0, 1, cookie, 0, len(block)) + block)
    magic, error, handle = struct.unpack(">IIQ", receive(sock, 16))
    assert magic == 0x67446698 and handle == cookie, "bad reply"
    if error:
        raise OSError(error, "write failed")


def main():
    a, b = connect(EXPORT_A), connect(EXPORT_B)
    value = 0
    while not os.path.exists(STOPFILE):
        value += 1
        write(a, value, value)
        write(b, value, value)
        with open(PROGRESS + ".tmp", "w") as out:
            out.write(str(value))
        os.replace(PROGRESS + ".tmp", PROGRESS)
    return 0


sys.exit(main())
