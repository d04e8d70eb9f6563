"""Names in a running process: a global's address and size, and an address's function.

A breakpoint watches a virtual address of one process, so a name is resolved the way gdb
and perf do it: the ELF symbol tables (pyelftools) of the executable and the shared
objects that ``/proc/PID/maps`` shows mapped, each moved to where this run loaded it (a
PIE executable and every shared object have a load base chosen by ASLR). It reads the
target's ``/proc``, so it runs on the host where the process lives.
"""

from __future__ import annotations

import bisect
import functools
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from elftools.common.exceptions import ELFError
from elftools.elf.elffile import ELFFile
from elftools.elf.sections import SymbolTableSection

from hwbp.errors import InvalidArgument, ProcessNotFound, SymbolAmbiguous, SymbolNotFound

WATCHABLE_SIZES = (1, 2, 4, 8)  # what one debug register can watch at once


@dataclass(frozen=True, slots=True)
class Mapping:
    """One line of /proc/PID/maps that maps a file."""

    start: int
    end: int
    offset: int
    path: str


@dataclass(frozen=True, slots=True)
class Symbol:
    """A data symbol where this run of the process has it."""

    name: str
    addr: int  # the runtime address: load base + st_value
    size: int
    path: str  # the object that defines it

    def watch_len(self) -> int:
        """The length to watch: the symbol's size, when one debug register covers it."""
        if self.size not in WATCHABLE_SIZES:
            raise InvalidArgument(
                f"symbol {self.name} in {self.path} is {self.size} bytes, not 1, 2, 4 or 8: "
                "give --len (and --addr for a part of it past the first 8 bytes)",
                symbol=self.name,
            )
        return self.size


@dataclass(frozen=True, slots=True)
class Location:
    """An address named: ``function+off`` and, where DWARF says, ``file:line``."""

    function: str | None
    offset: int
    path: str
    source: str | None = None  # "file.c:12"

    def __str__(self) -> str:
        name = self.function or os.path.basename(self.path)
        where = f"{name}+{self.offset:#x}"
        return where if self.source is None else f"{where} ({self.source})"


def maps(pid: int) -> list[Mapping]:
    """The file mappings of ``pid`` (anonymous ones and [vdso] & co. left out)."""
    try:
        with open(f"/proc/{pid}/maps") as f:
            lines = f.read().splitlines()
    except OSError as err:
        raise ProcessNotFound(
            f"cannot read the memory map of process {pid} on this host ({err.strerror}): "
            "names are resolved where the process runs",
            task=pid,
        ) from None
    out: list[Mapping] = []
    for line in lines:
        parts = line.split(maxsplit=5)
        if len(parts) < 6 or not parts[5].startswith("/"):
            continue
        lo, _, hi = parts[0].partition("-")
        out.append(Mapping(int(lo, 16), int(hi, 16), int(parts[2], 16), parts[5]))
    return out


@dataclass(frozen=True, slots=True)
class _Object:
    """One mapped ELF object, loaded at ``base``."""

    path: str
    base: int
    file: str  # where to read it: /proc/PID/map_files/... or the path itself


def _objects(pid: int) -> list[_Object]:
    by_path: dict[str, list[Mapping]] = {}
    for m in maps(pid):
        by_path.setdefault(m.path, []).append(m)
    out: list[_Object] = []
    for path, ms in by_path.items():
        lowest = min(ms, key=lambda m: (m.offset, m.start))
        table = _table(_readable(pid, path, lowest))
        if table is None:
            continue
        base = 0  # an ET_EXEC's addresses are absolute
        if table.dynamic:  # PIE or shared object: where its first segment landed
            first = next((m for m in ms if m.offset == table.first_offset), lowest)
            base = first.start - table.first_vaddr
        out.append(_Object(path, base, table.file))
    return out


def _readable(pid: int, path: str, m: Mapping) -> str:
    """The mapped file itself: through map_files when the path is gone or elsewhere (a
    container, a replaced binary), else its path."""
    via = f"/proc/{pid}/map_files/{m.start:x}-{m.end:x}"
    return via if os.path.exists(via) else path


@dataclass(frozen=True)
class _Table:
    """What one ELF file says: its data and function symbols, sorted for lookup."""

    file: str
    dynamic: bool  # ET_DYN: loaded at a base ASLR chooses
    first_vaddr: int  # the first PT_LOAD's page: mapped at base + this ...
    first_offset: int  # ... from this file offset
    data: dict[str, tuple[tuple[int, int, bool], ...]]  # name -> (value, size, global)
    funcs: tuple[tuple[int, int, str], ...]  # (value, size, name), sorted by value


@functools.lru_cache(maxsize=64)
def _table(file: str) -> _Table | None:
    data: dict[str, set[tuple[int, int, bool]]] = {}
    funcs: set[tuple[int, int, str]] = set()
    try:
        with open(file, "rb") as f:
            elf = ELFFile(f)
            loads = [s for s in elf.iter_segments() if s["p_type"] == "PT_LOAD"]
            if not loads:
                return None
            first = min(loads, key=lambda s: s["p_vaddr"])
            page = max(int(first["p_align"]), 1)
            dynamic = elf["e_type"] == "ET_DYN"
            for sym in _symbols(elf):
                kind = sym["st_info"]["type"]
                if sym["st_shndx"] == "SHN_UNDEF" or not sym.name:
                    continue
                if kind == "STT_OBJECT":
                    is_global = sym["st_info"]["bind"] in ("STB_GLOBAL", "STB_WEAK")
                    data.setdefault(sym.name, set()).add(
                        (sym["st_value"], sym["st_size"], is_global)
                    )
                elif kind in ("STT_FUNC", "STT_GNU_IFUNC"):
                    funcs.add((sym["st_value"], sym["st_size"], sym.name))
    except (OSError, ELFError):
        return None  # not an ELF file, or not readable: nothing to resolve there
    return _Table(
        file,
        dynamic,
        first["p_vaddr"] // page * page,
        first["p_offset"] // page * page,
        {k: tuple(sorted(v)) for k, v in data.items()},
        tuple(sorted(funcs)),
    )


def _symbols(elf: ELFFile) -> Iterator[Any]:  # elftools' Symbol (untyped)
    for name in (".symtab", ".dynsym"):
        section = elf.get_section_by_name(name)
        if isinstance(section, SymbolTableSection):
            yield from section.iter_symbols()


def resolve(pid: int, spec: str) -> Symbol:
    """The global ``spec`` names in process ``pid``: ``NAME``, or ``OBJECT:NAME`` to pick
    the object (its file name, e.g. ``libc.so.6:environ``) when several define it."""
    wanted_obj, _, name = spec.rpartition(":")
    if not name:
        raise InvalidArgument(f"symbol {spec!r} has no name", symbol=spec)
    found: dict[tuple[str, int], Symbol] = {}
    for obj in _objects(pid):
        if wanted_obj and wanted_obj not in (obj.path, os.path.basename(obj.path)):
            continue
        table = _table(obj.file)
        assert table is not None  # _objects keeps only those with a table
        entries = table.data.get(name, ())
        globals_ = [e for e in entries if e[2]] or list(entries)
        for value, size, _ in globals_:
            found.setdefault((obj.path, value), Symbol(name, obj.base + value, size, obj.path))
    where = f" in {wanted_obj}" if wanted_obj else ""
    if not found:
        raise SymbolNotFound(
            f"no data symbol {name}{where} in process {pid}: not in the symbol table of its "
            "executable or of any shared object it has mapped (a stripped binary has none)",
            symbol=spec,
        )
    if len(found) > 1:
        listed = ", ".join(
            f"{os.path.basename(s.path)}:{s.name} at {s.addr:#x}" for s in found.values()
        )
        raise SymbolAmbiguous(
            f"symbol {name} is defined more than once in process {pid}: {listed}; "
            "name one as OBJECT:NAME",
            symbol=spec,
        )
    return next(iter(found.values()))


class Symbolizer:
    """Names addresses of one process; reads its maps once (while it is alive)."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self._maps = maps(pid)
        self._objects = {o.path: o for o in _objects(pid)}

    def locate(self, addr: int) -> Location | None:
        """The function ``addr`` is in, and the source line of the instruction just
        before it: x86 reports a data breakpoint after the access, so ``addr`` is the
        next instruction and ``addr - 1`` lies in the one that made the access."""
        m = next((m for m in self._maps if m.start <= addr < m.end), None)
        obj = None if m is None else self._objects.get(m.path)
        if obj is None:
            return None
        table = _table(obj.file)
        assert table is not None
        rel = addr - obj.base
        i = bisect.bisect_right(table.funcs, (rel, 1 << 64, "")) - 1
        fn: str | None = None
        offset = rel
        if i >= 0:
            value, size, name = table.funcs[i]
            if rel < value + max(size, 1) or size == 0:
                fn, offset = name, rel - value
        return Location(fn, offset, obj.path, _lines(obj.file).at(rel - 1))


class _Lines:
    """DWARF line rows of one file: address -> "file:line"."""

    def __init__(self, rows: list[tuple[int, str]]) -> None:
        rows.sort()
        self._addrs = [a for a, _ in rows]
        self._where = [w for _, w in rows]

    def at(self, addr: int) -> str | None:
        i = bisect.bisect_right(self._addrs, addr) - 1
        if i < 0 or self._where[i] == "":
            return None
        return self._where[i]


@functools.lru_cache(maxsize=16)
def _lines(file: str) -> _Lines:
    rows: list[tuple[int, str]] = []
    try:
        with open(file, "rb") as f:
            elf = ELFFile(f)
            if not elf.has_dwarf_info():
                return _Lines([])
            dwarf = elf.get_dwarf_info()
            for cu in dwarf.iter_CUs():
                program = dwarf.line_program_for_CU(cu)
                if program is None:
                    continue
                names = _file_names(program)
                for entry in program.get_entries():
                    state = entry.state
                    if state is None:
                        continue
                    # An end_sequence row closes a run: nothing is known past it.
                    where = "" if state.end_sequence else f"{names(state.file)}:{state.line}"
                    rows.append((state.address, where))
    except (OSError, ELFError):
        return _Lines([])
    return _Lines(rows)


def _file_names(program: Any) -> Callable[[int], str]:
    header = program.header
    version = header["version"]
    entries = header["file_entry"]

    def name(index: int) -> str:
        i = index if version >= 5 else index - 1  # DWARF 5 numbers files from 0
        if 0 <= i < len(entries):
            raw = entries[i].name
            return raw.decode(errors="replace") if isinstance(raw, bytes) else str(raw)
        return "?"

    return name
