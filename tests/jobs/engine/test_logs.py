"""The CLI's output filter: Ray's known-noise lines are dropped from a program's stdout and stderr,
whoever writes them (Python, native code writing to file descriptor 2, child processes
that inherit it), and everything else comes through, to the last byte, without blocking."""

import subprocess
import sys
import textwrap

PROGRAM = textwrap.dedent(
    r"""
    import os, subprocess, sys
    from jobs.engine import drop_ray_noise

    drop_ray_noise()
    os.write(2, b"[E core_worker.cc:2465] Actor 'MapWorker' has constructor arguments in the object store and max_restarts > 0\n")
    os.write(2, b"kept: native\n")
    print("kept: python", file=sys.stderr)
    child = "import sys; sys.stderr.write('(raylet) WARNING: 8 PYTHON worker processes have been started\\nkept: child\\n')"
    subprocess.run([sys.executable, "-c", child], check=True)
    print("(SplitCoordinator pid=1) Progress bars disabled. To enable, ...", file=sys.stderr)
    sys.stderr.write("x" * 300000 + "\n")  # more than a pipe holds: the filter must keep reading
    print("(raylet) WARNING: 8 PYTHON worker processes have been started")  # Ray forwards some to stdout
    print("stdout is otherwise untouched")
    sys.stderr.write("kept: the last line, without its newline")
    """
)


def test_ray_noise_is_dropped_and_the_rest_comes_through():
    done = subprocess.run([sys.executable, "-c", PROGRAM], capture_output=True, timeout=60)
    assert done.returncode == 0, done.stderr[-2000:]
    err = done.stderr.decode()
    for kept in ("kept: native\n", "kept: python\n", "kept: child\n", "x" * 300000 + "\n"):
        assert kept in err
    assert err.endswith("kept: the last line, without its newline")
    for noise in ("constructor arguments", "PYTHON worker processes", "Progress bars disabled"):
        assert noise not in err
    assert done.stdout.decode() == "stdout is otherwise untouched\n"


def test_in_process_callers_keep_their_stderr(capfd):
    """`main(argv)` from Python (tests, notebooks) installs no filter: only programs do."""
    import os

    from jobs import cli

    assert cli.main(["demo", "--output", "unused", "sounds=birdsong"]) == 2  # stops at its settings
    os.write(2, b"has constructor arguments in the object store\n")
    assert "has constructor arguments" in capfd.readouterr().err


def test_on_a_terminal_the_program_still_writes_to_a_terminal(tmp_path):
    """Under a pseudo-terminal (`script`, as a user's shell): the filtered streams are still
    terminals (progress displays and terminal checks behave as before), a line redrawn
    with a carriage return goes out before its newline, and the noise is gone."""
    program = tmp_path / "program.py"
    program.write_text(
        textwrap.dedent(
            r"""
            import os, sys, time
            from jobs.engine import drop_ray_noise

            drop_ray_noise()
            print("isatty", os.isatty(1), os.isatty(2), file=sys.stderr)
            os.write(2, b"[E core_worker.cc] Actor has constructor arguments in the object store\n")
            sys.stderr.write("progress 50%\r")
            sys.stderr.flush()
            time.sleep(0.5)
            print("seen before the newline:", "progress 50%" in open(sys.argv[1]).read(), file=sys.stderr)
            sys.stderr.write("progress 100%\n")
            """
        )
    )
    log = tmp_path / "typescript"
    done = subprocess.run(
        ["script", "-qfec", f"{sys.executable} {program} {log}", str(log)], capture_output=True, timeout=60
    )
    out = done.stdout.decode()
    assert done.returncode == 0, out
    assert "isatty True True" in out and "seen before the newline: True" in out
    assert "progress 50%\r" in out and "progress 100%" in out and "constructor arguments" not in out
