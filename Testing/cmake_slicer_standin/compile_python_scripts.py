"""Byte-compile the files listed in argv[1] to <file>.pyc next to each, then write the argv[2]
stamp; what the compile script configured by CTK's ctkMacroCompilePythonScript does. As there, a
file that does not compile is reported and the build goes on."""

import py_compile
import sys
from pathlib import Path

for name in filter(None, Path(sys.argv[1]).read_text().splitlines()):
    try:
        py_compile.compile(name, cfile=name + "c", doraise=True)
    except py_compile.PyCompileError as e:
        print(e.msg)
Path(sys.argv[2]).write_text("Done")
