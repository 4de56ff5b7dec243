"""Bad command lines, launch arguments, output paths and run directories: one
``lorarec: error:`` line and exit code 2, nothing overwritten, nothing half-written. Also what
``--resume`` trusts (a checkpoint's owner, modes and sha256 manifest) and the Ray token file.

Every case here was a traceback, a silent overwrite or a silent acceptance before it was fixed.
"""

from __future__ import annotations

import os
import socket
import stat
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lorarec.core.errors import UsageError
from lorarec.launch.cli import main

ROOT = Path(__file__).resolve().parent.parent
TINY = str(ROOT / "configs/tiny.yaml")


def one_error_line(capsys, rc: int, *fragments: str) -> str:
    """Assert exit code 2 and exactly one stderr line, ``lorarec: error: ...`` holding every
    fragment; return it."""
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert rc == 2, err
    assert len(err) == 1, err
    assert err[0].startswith("lorarec: error:"), err
    for f in fragments:
        assert f in err[0], (f, err[0])
    return err[0]


# ------------------------------------------------------------------ the command line itself


@pytest.mark.parametrize(
    "argv, fragment",
    [
        pytest.param(["eval", TINY, "--bogus"], "--bogus", id="unknown-option"),
        pytest.param(["train"], "required", id="missing-argument"),
        pytest.param(["train", TINY, "--master-port", "abc"], "abc", id="non-integer-option"),
        pytest.param(["nosuchverb"], "nosuchverb", id="unknown-verb"),
        pytest.param(["train", TINY, "--launcher", "ssh"], "ssh", id="bad-choice"),
    ],
)
def test_argument_errors_are_one_line(capsys, argv, fragment):
    with pytest.raises(SystemExit) as exc:
        main(argv)
    one_error_line(capsys, exc.value.code, fragment)


def test_debug_and_verbose_work_after_the_verb(capsys, tmp_path):
    missing = str(tmp_path / "missing.yaml")
    assert main(["config", "show", missing]) == 2
    one_error_line(capsys, 2, "missing.yaml")
    with pytest.raises(Exception, match="missing.yaml"):  # --debug: the traceback, raised
        main(["config", "show", missing, "--debug"])
    assert main(["config", "show", TINY, "-v"]) == 0


def test_an_unexpected_exception_shows_its_traceback_and_asks_for_a_report(capsys, monkeypatch):
    import lorarec.launch.cli as cli

    def boom(args):
        raise RuntimeError("an internal failure")

    monkeypatch.setattr(cli, "cmd_config_show", boom)
    assert main(["config", "show", TINY]) == 1
    err = capsys.readouterr().err
    assert "Traceback" in err and "RuntimeError: an internal failure" in err
    assert "report" in err.splitlines()[-1]


def test_an_os_error_on_a_user_path_is_one_line(capsys, tmp_path):
    """An output under a read-only place, or under a file, is named in one line."""
    blocker = tmp_path / "file.txt"
    blocker.write_text("x")
    rc = main(["eval", TINY, "--out", str(blocker / "run"), "--quiet"])
    one_error_line(capsys, rc, str(blocker))
    readonly = Path("/sys/lorarec-test") if os.getuid() == 0 else tmp_path / "ro"
    if os.getuid() != 0:
        readonly.mkdir()
        readonly.chmod(0o555)
    rc = main(["eval", TINY, "--out", str(readonly / "run"), "--quiet"])
    one_error_line(capsys, rc, str(readonly))


# ------------------------------------------------------------------ outputs never clobbered


def test_emit_slurm_never_replaces_a_directory_or_a_foreign_file(capsys, ml100k_prepared, tmp_path):
    target = tmp_path / "jobs"
    target.mkdir()
    (target / "keep.txt").write_text("precious")
    base = ["train", TINY, f"data.dir={ml100k_prepared}", "--out", str(tmp_path / "run")]
    rc = main([*base, "--emit-slurm", str(target)])
    one_error_line(capsys, rc, str(target), "directory")
    assert (target / "keep.txt").read_text() == "precious"
    foreign = tmp_path / "notes.sh"
    foreign.write_text("#!/bin/sh\necho mine\n")
    rc = main([*base, "--emit-slurm", str(foreign)])
    one_error_line(capsys, rc, str(foreign))
    assert foreign.read_text() == "#!/bin/sh\necho mine\n"
    # its own earlier script is rewritten
    script = tmp_path / "run.sbatch"
    assert main([*base, "--emit-slurm", str(script)]) == 0
    assert main([*base, "--emit-slurm", str(script)]) == 0
    assert script.read_text().startswith("#!/usr/bin/env bash")


def test_atomic_writes_refuse_the_current_directory_and_leave_nothing(tmp_path, monkeypatch):
    from lorarec.core.io import atomic_path, write_text_atomic

    work = tmp_path / "work"
    work.mkdir()
    (work / "mine.txt").write_text("x")
    monkeypatch.chdir(work)
    for final in (".", "sub/..", ".."):
        with pytest.raises(OSError, match="current directory"):
            with atomic_path(final) as tmp:
                tmp.mkdir()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["work"]
    assert sorted(p.name for p in work.iterdir()) == ["mine.txt"]
    (work / "adir").mkdir()
    with pytest.raises(IsADirectoryError):
        write_text_atomic(work / "adir", "text")
    assert (work / "adir").is_dir()


def test_a_cache_entry_published_meanwhile_is_kept_and_never_missing(tmp_path):
    """Two processes filling one content-addressed cache entry (two test workers, two jobs on
    a shared $LORAREC_HOME): the second keeps the first one's entry, which stays in place, and
    leaves no temporary directory; without keep_existing the entry is replaced."""
    from lorarec.core.io import atomic_path

    final = tmp_path / "entry"
    with atomic_path(final, keep_existing=True) as tmp:
        tmp.mkdir()
        (tmp / "f").write_text("first")
        held = final.exists()  # nothing published yet
        with atomic_path(final, keep_existing=True) as other:
            other.mkdir()
            (other / "f").write_text("second")
        inode = final.stat().st_ino
    assert not held
    assert (final / "f").read_text() == "second" and final.stat().st_ino == inode
    assert sorted(p.name for p in tmp_path.iterdir()) == ["entry"]
    with atomic_path(final) as tmp:
        tmp.mkdir()
        (tmp / "f").write_text("replaced")
    assert (final / "f").read_text() == "replaced"


def test_eval_never_overwrites_a_training_run(capsys, tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text("the training run's config\n")
    (run / "train_summary.json").write_text("{}\n")
    rc = main(["eval", TINY, "--out", str(run), "--quiet"])
    one_error_line(capsys, rc, str(run), "training run", "--out")
    assert (run / "config.yaml").read_text() == "the training run's config\n"
    afile = tmp_path / "results.txt"
    afile.write_text("x")
    rc = main(["eval", TINY, "--out", str(afile), "--quiet"])
    one_error_line(capsys, rc, str(afile), "file")
    rc = main(["eval", TINY, "--out", str(tmp_path / "e"), "--adapter", str(tmp_path / "none")])
    one_error_line(capsys, rc, "--adapter")
    assert not (tmp_path / "e" / "config.yaml").exists()


def test_monitor_with_a_file_where_its_directory_goes(capsys, tmp_path):
    (tmp_path / "prometheus").write_text("x")
    rc = main(["monitor", str(tmp_path), "--port", "0"])
    one_error_line(capsys, rc, str(tmp_path / "prometheus"))


def test_corrupt_local_ray_record_is_one_line(capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("LORAREC_HOME", str(tmp_path))
    (tmp_path / "ray").mkdir()
    for text in ("{not json", "[]", '{"address": 5}', "\xff\xfe"):
        (tmp_path / "ray/head.json").write_bytes(text.encode("latin-1"))
        rc = main(["graph", "status"])
        one_error_line(capsys, rc, "head.json")


# ------------------------------------------------------------------ launch arguments


@pytest.fixture
def dry(ml100k_prepared, tmp_path):
    """``lorarec train --dry-run`` of the tiny config with these arguments."""

    def run(*extra, hostfile: str | bytes | None = None, ranks: int = 2):
        argv = [
            "train",
            TINY,
            f"data.dir={ml100k_prepared}",
            f"launch.ranks_per_node={ranks}",
            "--out",
            str(tmp_path / "run"),
            "--dry-run",
        ]
        if hostfile is not None:
            path = tmp_path / "hostfile"
            path.write_bytes(hostfile if isinstance(hostfile, bytes) else hostfile.encode())
            argv += ["--hostfile", str(path)]
        return main([*argv, *extra])

    return run


TWO = "node-a slots=2\nnode-b slots=2\n"


@pytest.mark.parametrize(
    "hostfile, extra, fragments",
    [
        pytest.param(
            b"node-a slots=2\n\xff\xfe\n", [], ["hostfile:2", "UTF-8"], id="hostfile-not-utf8"
        ),
        pytest.param(
            "node-a slots = 2\n", [], ["hostfile:1", "slots=N"], id="hostfile-spaces-around-equals"
        ),
        pytest.param("node-a slots=two\n", [], ["hostfile:1"], id="hostfile-slots-not-a-number"),
        pytest.param(
            TWO + "node-a slots=2\n", [], ["hostfile:3", "twice"], id="hostfile-duplicate-host"
        ),
        pytest.param(
            "node-a slots=0\n", [], ["hostfile:1", "at least 1"], id="hostfile-zero-slots"
        ),
        pytest.param("# only a comment\n\n", [], ["hostfile"], id="hostfile-no-hosts"),
        pytest.param(
            TWO, ["--include", "node-c"], ["--include", "node-c"], id="include-unknown-host"
        ),
        pytest.param(
            TWO, ["--include", "node-a:5"], ["--include", "slot"], id="include-unknown-slot"
        ),
        pytest.param(
            TWO, ["--exclude", "node-a@node-b"], ["--exclude", "no host"], id="exclude-every-host"
        ),
        pytest.param(
            TWO,
            ["--include", "node-a", "--exclude", "node-b"],
            ["--include and --exclude"],
            id="include-and-exclude",
        ),
        pytest.param(TWO, ["--num-nodes", "-1"], ["--num-nodes", "-1"], id="num-nodes-negative"),
        pytest.param(
            TWO, ["--num-nodes", "3"], ["--num-nodes 3", "2 hosts"], id="num-nodes-above-hosts"
        ),
        pytest.param(
            TWO,
            ["--no-ssh", "--node-rank", "2"],
            ["--node-rank 2", "0..1"],
            id="node-rank-outside-hostfile",
        ),
        pytest.param(
            "node-a slots=4\n",
            [],
            ["node-a", "4 ranks", "launch.ranks_per_node=2"],
            id="slots-disagree-with-ranks-per-node",
        ),
        pytest.param(
            None,
            ["--node-rank", "0"],
            ["--node-rank needs --hostfile"],
            id="node-rank-without-hostfile",
        ),
        pytest.param(
            None, ["--master-port", "70000"], ["--master-port 70000"], id="master-port-out-of-range"
        ),
    ],
)
def test_bad_launch_arguments_are_refused_before_anything_starts(
    capsys, dry, tmp_path, hostfile, extra, fragments
):
    rc = dry(*extra, hostfile=hostfile)
    one_error_line(capsys, rc, *fragments)
    assert not (tmp_path / "run").exists()


def test_hostfile_slots_decide_and_include_works_with_them(capsys, dry):
    """A hostfile's slots decide the ranks (no --num_gpus overriding them); --include, which the
    launcher refuses next to --num_gpus, passes through."""
    assert dry(hostfile=TWO) == 0
    out = capsys.readouterr().out
    assert "--hostfile" in out and "--num_gpus" not in out
    assert dry("--include", "node-b", hostfile=TWO) == 0
    out = capsys.readouterr().out
    assert "--include node-b" in out and "--num_gpus" not in out


def test_hostfile_parsing_agrees_with_the_deepspeed_launcher(tmp_path):
    from deepspeed.launcher.runner import fetch_hostfile

    from lorarec.launch.train import validate_hostfile

    path = tmp_path / "hf"
    path.write_text("# nodes\nnode-a slots=2 # the head\n\nnode-b   slots=8\n")
    assert validate_hostfile(str(path)) == dict(fetch_hostfile(str(path)))


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(st.lists(st.text(alphabet="ab- =#slot0123\t", max_size=16), max_size=4))
def test_generated_hostfiles_parse_as_the_launcher_would_or_are_one_line(tmp_path, lines):
    """For any hostfile text: lorarec accepts exactly what DeepSpeed's parser accepts (with slots
    of at least 1), else one UsageError naming the file."""
    from deepspeed.launcher.runner import _parse_hostfile

    from lorarec.launch.train import validate_hostfile

    path = tmp_path / "hf"
    text = "\n".join(lines) + "\n"
    path.write_text(text)
    try:
        ds = dict(_parse_hostfile(text.splitlines(keepends=True)))
    except ValueError:
        ds = None
    try:
        ours = validate_hostfile(str(path))
    except UsageError as exc:
        assert str(path) in str(exc) and "\n" not in str(exc)
        assert ds is None or min(ds.values()) < 1
    else:
        assert ours == ds


def test_master_port_free_by_default_and_a_taken_one_is_refused(capsys, dry):
    with socket.socket() as held:
        held.bind(("", 0))
        held.listen()
        port = held.getsockname()[1]
        rc = dry("--master-port", str(port))
        one_error_line(capsys, rc, f"--master-port {port}", "taken")
        rc = dry(f"launch.master_port={port}")
        one_error_line(capsys, rc, f"launch.master_port {port}", "taken")
        assert dry() == 0
        out = capsys.readouterr().out.split()
        chosen = int(out[out.index("--master_port") + 1])
        assert chosen != port
    with socket.socket() as probe:  # it was free
        probe.bind(("", chosen))


def test_resume_without_a_checkpoint_says_so(capsys, dry, tmp_path):
    assert dry() == 0
    capsys.readouterr()
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text("name: tiny\n")
    assert dry("--resume") == 0
    err = capsys.readouterr().err
    assert "no checkpoint" in err and "from step 0" in err


def test_a_failed_run_names_the_exact_resume_command(tmp_path):
    import argparse

    from lorarec.launch.train import resume_command

    args = argparse.Namespace(
        argv=["train", "cfg.yaml", "train.lr=1e-4", "--out", "x", "--hostfile", "hf", "--dry-run"]
    )
    cmd = resume_command(args, tmp_path / "run dir")
    assert (
        cmd
        == f"lorarec train cfg.yaml train.lr=1e-4 --hostfile hf --out '{tmp_path / 'run dir'}' --resume"
    )


def test_pushgateway_credentials_are_refused_and_never_echoed(capsys):
    rc = main(["config", "show", TINY, "monitoring.pushgateway=http://bob:s3cret@gw:9091"])
    line = one_error_line(capsys, rc, "monitoring.pushgateway", "LORAREC_PUSHGATEWAY_USER")
    assert "s3cret" not in line and "bob" not in line


# ------------------------------------------------------------------ what resume trusts


def fake_checkpoint(root: Path, tag: str = "step-00000004") -> Path:
    """A checkpoint directory as two ranks save it, with its manifest."""
    from lorarec.trainer import checkpoint_manifest as CM

    ckpt = root / tag
    ckpt.mkdir(parents=True)
    for name, size in [
        ("zero_pp_rank_0_mp_rank_00_model_states.pt", 300),
        ("zero_pp_rank_1_mp_rank_00_model_states.pt", 300),
        ("zero_pp_rank_0_mp_rank_00_optim_states.pt", 5000),
        ("zero_pp_rank_1_mp_rank_00_optim_states.pt", 5000),
        ("rng_rank00000.safetensors", 40),
        ("rng_rank00001.safetensors", 40),
        ("trainer_state.json", 20),
    ]:
        (ckpt / name).write_bytes(os.urandom(size))
    per_rank = [CM.own_hashes(ckpt, r, 2) for r in (0, 1)]
    assert len(per_rank[1]) == 3 and len(per_rank[0]) == 4  # rank 1 hashed only its own files
    CM.write_manifest(ckpt, per_rank)
    return ckpt


@pytest.mark.parametrize(
    "damage, fragment",
    [
        pytest.param(
            lambda c: _flip(c / "zero_pp_rank_1_mp_rank_00_optim_states.pt"),
            "sha256",
            id="flipped-byte",
        ),
        pytest.param(
            lambda c: _truncate(c / "zero_pp_rank_0_mp_rank_00_model_states.pt"),
            "sha256",
            id="truncated-file",
        ),
        pytest.param(
            lambda c: (c / "rng_rank00001.safetensors").unlink(), "missing", id="missing-file"
        ),
        pytest.param(
            lambda c: (c / "evil.pt").write_bytes(b"x"), "not in the checkpoint", id="extra-file"
        ),
        pytest.param(
            lambda c: (c / "manifest.json").unlink(), "no manifest.json", id="no-manifest"
        ),
        pytest.param(
            lambda c: (c / "manifest.json").write_text("[1]"),
            "not a checkpoint manifest",
            id="bad-manifest",
        ),
        pytest.param(
            lambda c: (c / "trainer_state.json").chmod(0o666),
            "writable by group or others",
            id="world-writable-file",
        ),
        pytest.param(
            lambda c: c.chmod(0o775), "writable by group or others", id="group-writable-directory"
        ),
    ],
)
def test_resume_refuses_a_checkpoint_it_cannot_trust(tmp_path, damage, fragment):
    from lorarec.trainer.checkpoint_manifest import verify_checkpoint

    ckpt = fake_checkpoint(tmp_path / "checkpoints")
    assert verify_checkpoint(ckpt.parent, ckpt.name) == 7
    damage(ckpt)
    with pytest.raises(UsageError, match=fragment):
        verify_checkpoint(ckpt.parent, ckpt.name)


@pytest.mark.skipif(os.getuid() != 0, reason="giving a file to another user needs root")
def test_resume_refuses_another_users_checkpoint(tmp_path):
    from lorarec.trainer.checkpoint_manifest import verify_checkpoint

    ckpt = fake_checkpoint(tmp_path / "checkpoints")
    os.chown(ckpt / "trainer_state.json", 12345, 12345)
    with pytest.raises(UsageError, match="another user"):
        verify_checkpoint(ckpt.parent, ckpt.name)


def _flip(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:-10])


def test_ray_token_file_must_be_private(tmp_path, monkeypatch):
    from lorarec.graph_service import service

    monkeypatch.setenv("LORAREC_HOME", str(tmp_path))
    for key in ("RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH", "RAY_AUTH_MODE"):
        monkeypatch.delenv(key, raising=False)
    env = service.auth_environment()  # created 0600
    token = Path(env["RAY_AUTH_TOKEN_PATH"])
    assert stat.S_IMODE(token.stat().st_mode) == 0o600
    token.chmod(0o644)
    with pytest.raises(UsageError, match="mode 644"):
        service.auth_environment()
    token.chmod(0o600)
    given_path = tmp_path / "theirs"
    given_path.write_text("0" * 64)
    given_path.chmod(0o640)
    monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", str(given_path))
    with pytest.raises(UsageError, match="mode 640"):
        service.auth_environment()
