"""Turns a MONITOR capture into a Lua file returning the script calls it saw, in order:
{function name, {keys...}, {args...}} (MONITOR shows each argument escaped, in quotes)."""
import re
import sys

ESCAPES = {"n": 10, "r": 13, "t": 9, "a": 7, "b": 8, "\\": 92, '"': 34}


def unescape(text):
    out, i = bytearray(), 0
    while i < len(text):
        if text[i] != "\\":
            out.extend(text[i].encode("latin-1"))
            i += 1
        elif text[i + 1] == "x":
            out.append(int(text[i + 2:i + 4], 16))
            i += 4
        else:
            out.append(ESCAPES[text[i + 1]])
            i += 2
    return bytes(out)


def lua_string(data):
    # Three-digit decimal escapes for everything but plain printable characters.
    return '"' + "".join(chr(b) if 32 <= b < 127 and b not in (34, 92) else "\\%03d" % b
                         for b in data) + '"'


calls = []
with open(sys.argv[1], encoding="latin-1") as capture:
    for line in capture:
        m = re.match(r"[\d.]+ \[\d+ ([^\]]+)\] (.*)", line)
        if not m or m.group(1) == "lua":  # commands run by scripts are not calls
            continue
        args = [unescape(a) for a in re.findall(r'"((?:[^"\\]|\\.)*)"', m.group(2))]
        if args and args[0].upper() == b"FCALL":
            keys = int(args[2])
            calls.append((args[1], args[3:3 + keys], args[3 + keys:]))
with open(sys.argv[2], "w", encoding="latin-1") as out:
    out.write("return {\n")
    for name, keys, argv in calls:
        out.write("{%s, {%s}, {%s}},\n" % (lua_string(name), ", ".join(map(lua_string, keys)),
                                           ", ".join(map(lua_string, argv))))
    out.write("}\n")
print("captured %d script calls" % len(calls))
