"""Names resolved in a real process: a compiled PIE, its shared objects, ASLR bases."""

from __future__ import annotations

import ctypes
from collections.abc import Iterator
from pathlib import Path

import pytest

from hwbp.errors import InvalidArgument, ProcessNotFound, SymbolAmbiguous, SymbolNotFound
from hwbp.wire import procfs, symbols
from tests.integration.c_targets import Threads, compile_c


@pytest.fixture(scope="module")
def exe(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return compile_c("threads", tmp_path_factory.mktemp("c"))


@pytest.fixture
def running(exe: Path) -> Iterator[Threads]:
    t = Threads(exe)
    try:
        yield t
    finally:
        t.kill()


def read_long(pid: int, addr: int) -> int:
    with open(f"/proc/{pid}/mem", "rb") as f:
        f.seek(addr)
        return int.from_bytes(f.read(8), "little", signed=True)


def test_a_global_resolves_to_where_this_run_loaded_it(running: Threads) -> None:
    sym = symbols.resolve(running.pid, "counter")
    assert (sym.size, sym.watch_len(), Path(sym.path).name) == (8, 8, "threads")
    before = read_long(running.pid, sym.addr)
    running.stores("t", 3)
    assert read_long(running.pid, sym.addr) == before + 3  # the address the program writes
    assert symbols.resolve(running.pid, "small").watch_len() == 4
    assert symbols.resolve(running.pid, "threads:counter") == sym
    assert symbols.resolve(running.pid, "hidden").size == 8  # a static has no rival here


def test_a_pie_moves_with_aslr(exe: Path) -> None:
    a, b = Threads(exe), Threads(exe)
    try:
        addrs = {symbols.resolve(t.pid, "counter").addr for t in (a, b)}
    finally:
        a.kill()
        b.kill()
    assert len(addrs) == 2  # two runs, two load bases (ASLR), each resolved


def test_a_shared_objects_global_resolves_too(running: Threads) -> None:
    sym = symbols.resolve(running.pid, "libc.so.6:environ")
    assert "libc" in Path(sym.path).name
    # This process's own libc has the same layout: its environ holds a pointer too.
    assert sym.size == 8 and read_long(running.pid, sym.addr) != 0
    assert ctypes.sizeof(ctypes.c_void_p) == sym.watch_len()


def test_unknown_ambiguous_and_unwatchable_names_say_what_is_wrong(running: Threads) -> None:
    with pytest.raises(SymbolNotFound, match="no data symbol no_such_thing in process"):
        symbols.resolve(running.pid, "no_such_thing")
    with pytest.raises(SymbolNotFound, match="store_many"):  # a function is not data
        symbols.resolve(running.pid, "store_many")
    with pytest.raises(SymbolAmbiguous, match="opterr is defined more than once") as amb:
        symbols.resolve(running.pid, "opterr")  # the program's and libc's
    assert "OBJECT:NAME" in str(amb.value) and "threads:opterr" in str(amb.value)
    assert Path(symbols.resolve(running.pid, "threads:opterr").path).name == "threads"
    with pytest.raises(InvalidArgument, match="32 bytes, not 1, 2, 4 or 8: give --len"):
        symbols.resolve(running.pid, "buffer").watch_len()
    with pytest.raises(ProcessNotFound, match="names are resolved where the process runs"):
        symbols.resolve(1 << 30, "counter")


def test_an_address_is_named_function_plus_offset_and_line(running: Threads) -> None:
    table = symbols._table(str(running.exe))
    assert table is not None
    store_many = next((v, s) for v, s, n in table.funcs if n == "store_many")
    base = symbols.resolve(running.pid, "counter").addr - table.data["counter"][0][0]
    loc = symbols.Symbolizer(running.pid).locate(base + store_many[0] + 0x10)
    assert loc is not None and loc.function == "store_many" and loc.offset == 0x10
    assert loc.source is not None and loc.source.startswith("threads.c:")
    assert str(loc) == f"store_many+0x10 ({loc.source})"


def test_threads_are_listed_from_proc(running: Threads) -> None:
    assert procfs.threads_of(running.pid) == (running.pid, running.second)
    assert procfs.tgid_of(running.second) == running.pid
    with pytest.raises(ProcessNotFound):
        procfs.threads_of(1 << 30)


def test_a_non_pie_executable_keeps_its_link_time_addresses(tmp_path: Path) -> None:
    exe = compile_c("threads", tmp_path, "-no-pie")
    t = Threads(exe)
    try:
        sym = symbols.resolve(t.pid, "counter")
        table = symbols._table(str(exe))
        assert table is not None and not table.dynamic
        assert sym.addr == table.data["counter"][0][0]  # ET_EXEC: the value is the address
        before = read_long(t.pid, sym.addr)
        t.stores("t", 2)
        assert read_long(t.pid, sym.addr) == before + 2
    finally:
        t.kill()
