#!/usr/bin/env python3
"""Run one command and measure the CPU time and memory of its whole process tree.

Usage: measure.py RESULT.json LIMIT_SECONDS -- COMMAND [ARG...]

This process becomes a child subreaper, so every process the command starts,
even one whose parent exits first, is reparented here and reaped here: its
CPU time then lands in this process's RUSAGE_CHILDREN, which is read once the
whole tree has exited. Peak memory is the largest sum of resident set sizes
over the tree, sampled every 100 ms (a single process's own peak, from
getrusage, is reported beside it). The command is sent SIGINT at the limit,
or when this process gets SIGUSR1 (for a tool with no time limit of its
own), and SIGKILL 10 s later; only processes of this tree are signalled.

It also writes the tree's cumulative CPU time every 100 ms (`timeline`:
monotonic seconds, CPU-seconds), from the processes reaped so far and the
live ones' /proc/PID/stat, so that the CPU spent within a window (while the
load ran, without start-up) can be read off afterwards.
"""

import ctypes
import json
import os
import resource
import signal
import subprocess
import sys
import time

PR_SET_CHILD_SUBREAPER = 36
PAGE = os.sysconf("SC_PAGE_SIZE")
TICK = os.sysconf("SC_CLK_TCK")


def descendants(root):
    """PIDs of every live process below `root` (itself included), and each
    one's CPU ticks so far (its own and its reaped children's)."""
    parent, ticks = {}, {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue
        # The command name may hold spaces and parentheses: split after the last ')'.
        fields = stat[stat.rfind(b")") + 2 :].split()
        parent[int(name)] = int(fields[1])
        ticks[int(name)] = sum(int(v) for v in fields[11:15])
    tree, frontier = {root}, [root]
    while frontier:
        pid = frontier.pop()
        for child, ppid in parent.items():
            if ppid == pid and child not in tree:
                tree.add(child)
                frontier.append(child)
    return tree, sum(ticks.get(pid, 0) for pid in tree if pid != root)


def tree_rss(pids):
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/statm") as f:
                total += int(f.read().split()[1]) * PAGE
        except (OSError, IndexError, ValueError):
            pass
    return total


def signal_tree(pids, sig):
    for pid in pids:
        try:
            os.kill(pid, sig)
        except OSError:
            pass


def main():
    if len(sys.argv) < 5 or sys.argv[3] != "--":
        sys.exit(__doc__)
    out, limit, argv = sys.argv[1], float(sys.argv[2]), sys.argv[4:]
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        sys.exit("measure.py: prctl(PR_SET_CHILD_SUBREAPER) failed")
    asked = []
    signal.signal(signal.SIGUSR1, lambda *_: asked.append(time.monotonic()))
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.monotonic()
    child = subprocess.Popen(argv)
    me = os.getpid()
    peak, status, stopped, timeline = 0, None, None, []
    while True:
        # Reap whatever has exited: the command itself and any orphan handed to us.
        while True:
            try:
                pid, st = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                pid = -1
            if pid <= 0:
                break
            if pid == child.pid:
                status = os.waitstatus_to_exitcode(st)
                child.returncode = status
        tree, ticks = descendants(me)
        tree -= {me}
        reaped = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu = reaped.ru_utime + reaped.ru_stime - before.ru_utime - before.ru_stime + ticks / TICK
        timeline.append((round(time.monotonic(), 3), round(cpu, 3)))
        if not tree:
            break
        peak = max(peak, tree_rss(tree))
        elapsed = time.monotonic() - start
        if stopped is None and (elapsed > limit or asked):
            stopped = "SIGINT"
            limit = min(limit, time.monotonic() - start)
            signal_tree(tree, signal.SIGINT)
        elif stopped == "SIGINT" and elapsed > limit + 10:
            stopped = "SIGKILL"
            signal_tree(tree, signal.SIGKILL)
        time.sleep(0.1)
    wall = time.monotonic() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    result = {
        "exit": status,
        "wall_s": wall,
        "user_s": after.ru_utime - before.ru_utime,
        "sys_s": after.ru_stime - before.ru_stime,
        "peak_tree_rss_bytes": peak,
        "max_single_rss_bytes": after.ru_maxrss * 1024,
        "stopped_at_limit": stopped,
        "timeline": timeline,
    }
    with open(out, "w") as f:
        json.dump(result, f)


if __name__ == "__main__":
    main()
