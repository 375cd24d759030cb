"""Render docs/RELIABILITY.md from the reliability lab's figures (one JSON object a line, written by
tests/lab.py's ``figure``) and pytest's JUnit XML of the same run. Used by scripts/reliability."""
from __future__ import annotations

import argparse
import json
import sys
import xml.etree.ElementTree as ET
from typing import Dict, List

# model -> (fault model, test, how to read its figure into the table's columns)
ROWS = [
    ("powerloss_fs_self_test_sqlite", "power cut: sqlite WAL, synchronous=FULL vs OFF (self-test)",
     "test_powerloss_fs.py::test_sqlite_wal_full_survives_and_synchronous_off_loses",
     lambda f: dict(faults=2, acked=f["committed"] * 2, lost="FULL %d / OFF %d" % (f["lost_full"], f["lost_off"]))),
    ("gmq_power_cut", "power cut: gmq under load (4 producers, every other cut during an upstream outage)",
     "test_powercut_gmq.py::test_power_cuts_under_load_lose_nothing_acknowledged",
     lambda f: dict(faults=f["cuts"], acked=f["acknowledged"], lost=f["lost"],
                    dup="%d (resent %d)" % (f["duplicated"], f["resent"]))),
    ("gmq_power_cut_without_commit_fsync", "**deliberate fault**: the same, gmq copy with commits at synchronous=NORMAL",
     "test_powercut_gmq.py::test_the_lab_catches_gmq_without_its_commit_fsync",
     lambda f: dict(faults=f["cuts"], acked=f["acknowledged"], lost="**%d (caught)**" % f["lost"],
                    dup=f["duplicated"])),
    ("atomic_config_power_cut", "power cut: 3 atomic_config writers (atomic_write, AtomicConfigParser, set_option)",
     "test_powercut_atomic_config.py::test_atomic_config_writers_survive_power_cuts",
     lambda f: dict(faults=f["cuts"], acked=f["acknowledged"], lost=f["lost"],
                    installs="in-flight write kept %d / reverted %d" % (f["last_write_kept"],
                                                                       f["last_write_reverted"]))),
    ("atomic_config_power_cut_without_file_fsync", "**deliberate fault**: the same, atomic_write without its file fsync",
     "test_powercut_atomic_config.py::test_the_lab_catches_atomic_write_without_its_file_fsync",
     lambda f: dict(faults=f["cuts"], acked=f["acknowledged"], lost="**%d files (caught)**" % f["lost"])),
    ("otau_install_power_cut", "power cut: `gwe -I` v(n+1) over RUNNING v(n), then supervisord + `gwe --recover`",
     "test_powercut_otau.py::test_gwe_install_survives_power_cuts",
     lambda f: dict(faults=f["cuts"], installs="%d / %d / %d" % (f["installs_old"], f["installs_new"],
                                                                 f["installs_half"]))),
    ("murano_local_store_power_cut", "power cut: murano_local's store under 3 writers",
     "test_powercut_stores.py::test_murano_local_store_survives_power_cuts",
     lambda f: dict(faults=f["cuts"], acked=f["acknowledged"], lost="%d (tokens lost %d)" % (f["lost"],
                                                                                          f["tokens_lost"]))),
    ("usage_log_power_cut", "power cut: the usage log (synchronous=NORMAL by design: rows may go, never corruption)",
     "test_powercut_stores.py::test_usage_log_survives_power_cuts_intact",
     lambda f: dict(faults=f["cuts"], acked="%d rows logged (not acknowledged)" % f["rows_logged"],
                    lost="%d rows, worst cut %d; corrupt %d" % (f["rows_lost"], f["worst_cut"], f["corrupt"]))),
    ("gmq_disk_full", "ENOSPC: an 8 MiB tmpfs filled to random levels under load, kill -9 while full",
     "test_storage_faults.py::test_a_filling_disk_answers_507_and_loses_nothing",
     lambda f: dict(faults="%d fills, %d kills" % (f["steps"], f["kills"]), acked=f["acknowledged"], lost=f["lost"],
                    crashes="507 x%d, other %s" % (f["answered_507"], f["other_answers"] or "none"))),
    ("gmq_disk_read_only", "read-only: ext4 errors=remount-ro hit by an error under load, then e2fsck + restart",
     "test_storage_faults.py::test_a_disk_turned_read_only_under_load",
     lambda f: dict(faults=1, acked=f["acknowledged"], lost=f["lost"],
                    crashes="gmq up: %s; answers %s" % (f["gmq_stayed_up"], f["answers"]))),
    ("gmq_db_damaged_scribbled_page", "damage: one queue leaf page of gmq.db overwritten while stopped",
     "test_storage_faults.py::test_a_database_damaged_while_stopped_is_salvaged[scribbled_page]",
     lambda f: dict(faults=f["pages_destroyed"], acked=f["acknowledged"],
                    lost="%d (rows on the page: %d)" % (f["lost"], f["loss_bound"]))),
    ("gmq_db_damaged_truncated", "damage: gmq.db truncated by a quarter while stopped",
     "test_storage_faults.py::test_a_database_damaged_while_stopped_is_salvaged[truncated]",
     lambda f: dict(faults=f["pages_destroyed"], acked=f["acknowledged"],
                    lost="**%d** (rows on the lost pages: %d)" % (f["lost"], f["loss_bound"]))),
    ("network_gmq", "network: gmq through every profile (namespace + veth + fault proxy)",
     "test_network_faults.py::test_gmq_survives_every_network_profile",
     lambda f: dict(faults="%d profiles, %d cuts" % (f["profiles"], f["proxy_cuts"]), acked=f["acknowledged"],
                    lost=f["lost"], dup="%d (resent %d)" % (f["duplicated"], f["resent"]))),
    ("network_cut_after_commit", "network: every answer cut after murano_local committed",
     "test_network_faults.py::test_a_cut_after_murano_local_committed_is_resent_never_lost",
     lambda f: dict(faults=f["committed_before_answer"], acked=f["acknowledged"], lost=f["lost"],
                    dup="resent %d, kept twice %d" % (f["resent"], f["kept_twice"]))),
    ("network_gwe_long_poll", "network: gwe's long poll through every profile",
     "test_network_faults.py::test_gwe_long_poll_survives_every_network_profile",
     lambda f: dict(faults=f["profiles"], acked="%d settings set" % f["adopted"],
                    lost="0 (slowest adoption %.1f s)" % f["max_seconds_to_adopt"])),
    ("network_content_download", "network: a resumed content download through every profile",
     "test_network_faults.py::test_content_download_survives_every_network_profile",
     lambda f: dict(faults=f["profiles"], lost="corrupt %d" % f["corrupt"])),
]
FUZZ = [("fuzz_gmq_http", "gmq's HTTP front end, raw bytes on a real socket",
         "test_fuzz.py::test_gmq_http_front_end_takes_any_bytes"),
        ("fuzz_murano_local_http", "murano_local's HTTP front end, raw bytes on a real socket",
         "test_fuzz.py::test_murano_local_http_front_end_takes_any_bytes"),
        ("fuzz_form_codec", "the Device-API form codec (round trip, any bytes)",
         "test_fuzz.py::test_form_codec_round_trips_and_takes_any_bytes"),
        ("fuzz_engine_fetch", "the engine_fetch parser", "test_fuzz.py::test_engine_fetch_parser_takes_any_text"),
        ("fuzz_buildfile", "the buildfile parser (JSON/YAML)", "test_fuzz.py::test_buildfile_parser_takes_any_text"),
        ("fuzz_gateway_cfg", "Gateway.cfg", "test_fuzz.py::test_gateway_cfg_parser_takes_any_text"),
        ("fuzz_gmq_cfg", "gmq.cfg", "test_fuzz.py::test_gmq_cfg_parser_takes_any_text")]


def outcomes(junit: str) -> Dict[str, str]:
    """``file.py::test`` -> passed / failed / xfailed (a known hole) / skipped."""
    return {name: state for name, (state, _) in details(junit).items()}


def details(junit: str) -> Dict[str, tuple]:
    """``file.py::test`` -> (outcome, the xfail reason or the failure's message)."""
    result = {}
    for case in ET.parse(junit).iter("testcase"):
        name = "%s.py::%s" % (case.get("classname", "").split(".")[-1], case.get("name"))
        state, why = "passed", ""
        for child in case:
            if child.tag in ("failure", "error"):
                state, why = "**failed**", (child.get("message") or "").splitlines()[0][:300] if child.get(
                    "message") else ""
            elif child.tag == "skipped":
                xfail = "xfail" in (child.get("type", "") + child.get("message", ""))
                state = "xfailed (known hole)" if xfail else "skipped"
                why = (child.get("message") or "").replace("xfail: ", "").replace("\n", " ")
        result[name] = (state, why)
    return result


def render(figures: List[dict], results: Dict[str, str], minutes: float, reasons: Dict[str, tuple]) -> str:
    by_model = {}
    for f in figures:
        by_model[f["model"]] = f
    out = [HEADER % {"minutes": minutes}]
    out.append("| fault model | faults injected | acknowledged | lost | duplicated | installs old / new / half "
               "| other | test |")
    out.append("|---|---:|---:|---:|---:|---|---|---|")
    for model, title, test, read in ROWS:
        f = by_model.get(model)
        cells = read(f) if f else {}
        out.append("| %s | %s | %s | %s | %s | %s | %s | %s |" % (
            title, cells.get("faults", "not run"), cells.get("acked", ""), cells.get("lost", ""),
            cells.get("dup", ""), cells.get("installs", ""), cells.get("crashes", ""), results.get(test, "not run")))
    out.append("")
    out.append("| fuzz target | cases | crashes (tracebacks, 5xx, server down) | test |")
    out.append("|---|---:|---:|---|")
    for model, title, test in FUZZ:
        f = by_model.get(model, {})
        out.append("| %s | %s | %s | %s |" % (title, f.get("cases", "not run"), f.get("crashes", ""),
                                              results.get(test, "")))
    holes = sorted(t for t, r in results.items() if r.startswith("xfailed"))
    failed = sorted(t for t, r in results.items() if "failed" in r and not r.startswith("xfailed"))
    out.append("")
    out.append("## Known holes")
    out.append("")
    out.append("Tests marked `xfail(strict=True)`: they fail today, and turn into a failure (to un-mark) once fixed.")
    out.append("")
    for t in holes or ["none"]:
        out.append("- `%s`: %s" % (t, reasons.get(t, ("", ""))[1]) if t != "none" else "- none")
    if failed:
        out.append("")
        out.append("## Failed in this run")
        out.append("")
        for t in failed:
            out.append("- `%s`: %s" % (t, reasons.get(t, ("", ""))[1]))
    out.append(FOOTER)
    return "\n".join(out) + "\n"


HEADER = """# Reliability lab

Our promise is "acknowledged means durable; an update is old or new, never half". Killing
processes cannot test it: SIGKILL keeps the kernel's page cache, so a missing fsync goes unseen.
The lab tests it against lost power, full and failing disks, damaged databases, a bad network and
hostile input, in the repository, on every run of the suite (bounded counts) and in a long run
(`scripts/reliability`, which also writes this file).

## The long run

`scripts/reliability` ran every lab test with the full counts (`GWE_LAB_FULL=1`) in %(minutes).1f
minutes on the 2-core development VM. Counts in the suite are smaller (see each test).
"""

FOOTER = """
## How each fault is made

- **Power cut** (`tests/powerloss_fs.py`): a FUSE filesystem (mfusepy on libfuse3) passes every
  operation through to a backing directory and keeps aside what is not yet durable: a page's
  durable content before its first change since the file's last `fsync`/`fdatasync`, a
  directory's durable listing before its first change since the directory's last `fsync`
  (create, mkdir, link, symlink, unlink, rmdir, rename; an unlinked inode is kept by a hard link
  in a side directory, so a reverted name comes back with its durable data; a rename is made
  durable by an fsync of either directory, as a journalling filesystem commits it whole). A cut
  freezes the filesystem (every later operation gets EIO, then the processes are SIGKILLed),
  rebuilds the backing directory from the durable state and unmounts; the next mount runs on
  what survived. Half the cuts keep a random prefix of the unsynced operations in issue order
  and tear the next write at a 512-byte boundary. Self-tests: `tests/test_powerloss_fs.py`.
- **sqlite on FUSE**: WAL mode works unchanged. The `-shm` wal-index is mmapped `MAP_SHARED`,
  which FUSE allows only with the page cache (no `direct_io`); sqlite never fsyncs it and rebuilds
  it from the WAL when the first connection opens the database, so its unsynced writes being
  thrown away is what sqlite expects. POSIX locks are left to the kernel (the filesystem has no
  `lock` operation), correct for processes of one machine. Unix sockets cannot live on FUSE:
  `run/` (a tmpfs on a gateway anyway) is a symlink to a real directory.
- **Full disk**: a tmpfs of 8 MiB (`tests/lab.py` `Tmpfs`) under `var/lib/gwe`, filled by a filler
  file to a random number of free bytes, down to none.
- **Read-only disk**: an ext4 image on a loop device mounted `errors=remount-ro`; ext4's
  `trigger_fs_error` makes it read-only under load, as a dying SD card does; the "reboot" is
  umount, `e2fsck -fy`, mount.
- **Damaged database**: gmq stopped with a backlog and checkpointed, then its file truncated or one
  leaf page of the queue (found with sqlite's `dbstat`) overwritten; or gmq SIGKILLed and its WAL
  scribbled. The loss allowed is the rows that were on the destroyed pages (`dbstat`'s `ncell`).
- **Network** (`tests/netns.py`, `tests/fault_proxy.py`): murano_local runs in a network namespace
  of its own, reached over a veth pair (both made and removed by the test); the gateway's upstream
  goes through a userspace proxy: `latency`, `cut_request` (after N bytes from the client),
  `cut_response` (after N bytes of the answer: the server has done the work), `blackhole` (held,
  delivered when the route is back, as TCP retransmits), `blackhole_drop` (lost for good: only the
  client's timeout ends it; long run only), `refuse` (reset), `flap` (the proxy's), and
  `link_down` (the veth link itself). Profiles apply to kept-alive connections too. Without root
  the same profiles run on loopback.
- **Fuzzing** (`tests/test_fuzz.py`, hypothesis): raw requests on real sockets (malformed request
  lines, header names with NUL/CR/LF, duplicate and conflicting Content-Length,
  Transfer-Encoding, bare LF and CR, huge numbers, invalid UTF-8, pipelining); never a 5xx but the
  documented 501/505, the server stays up, a refused request stores nothing. Parsers: a result or
  the part's own error, never another exception.

## What is not simulated

- **A disk's volatile write cache.** An fsync here is final. A disk or SD card that acknowledges a
  flush it has not done (many cheap SD cards and USB sticks do) loses data no software can keep;
  use storage that honours flushes, or a UPS.
- **Torn or corrupted sectors below the filesystem**, other than the 512-byte torn write of the
  prefix mode: no bit rot, no misdirected writes, no flash translation layer losing old data
  while writing new (which can damage data that was synced long before).
- **Reordering of unsynced writes.** The prefix mode keeps unsynced operations in the order they
  were issued; a real page cache writes them back in any order. (The durable state itself, what
  an fsync guarantees, does not depend on it.)
- **Metadata-only changes** (chmod, chown, utimes) are durable at once.
- **Filesystems that do more than POSIX requires.** ext4 and XFS commit a file's new directory
  entry, and the directories above it, with the journal on the next fsync of anything; this
  filesystem does not (strict POSIX), which is how the lab found directories created without an
  fsync of their parent. Code that passes here also passes on them; not the other way round.
- **The kernel's own crash behaviour** (a real power cut mid-DMA, jbd2 replay): the lab replaces
  the block layer, it does not exercise it.
- **netem-style packet loss, reordering and bandwidth limits**: the kernel here has no netem; the
  proxy works on TCP streams, so it cuts, delays and blackholes connections but cannot drop single
  segments.

## Run it

```sh
scripts/reliability            # the long run (< 30 min): prints the table and rewrites docs/RELIABILITY.md
scripts/test -k "powerloss or powercut or storage_faults or network_faults or fuzz"   # the bounded versions
GWE_LAB_SEED=12345 scripts/test -k powercut   # repeat a run's random choices (each figure prints its seed)
```
"""


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("figures")
    parser.add_argument("junit")
    parser.add_argument("--minutes", type=float, default=0.0)
    parser.add_argument("--output", default="-")
    args = parser.parse_args(argv)
    with open(args.figures) as f:
        figures = [json.loads(line) for line in f if line.strip()]
    text = render(figures, outcomes(args.junit), args.minutes, details(args.junit))
    if args.output == "-":
        sys.stdout.write(text)
    else:
        with open(args.output, "w") as f:
            f.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
