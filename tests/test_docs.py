"""Every runnable snippet of README.md and of docs/**/*.md is executed, so the documentation cannot drift
from the code.

The convention, in the markdown:
- ```python blocks run as scripts; ```bash / ```sh blocks run command by command (a trailing `\\` continues
  a line). A document runs top to bottom in one scratch folder, as a reader would follow it: a block may use
  what an earlier one wrote (the export block writes the `exported/` that the onnxruntime block reads).
  Fences without a language (diagrams, printed output) are text.
- `<!-- skip-test: REASON -->` on the lines just above a fence skips the block; with a command prefix,
  `<!-- skip-test `make install`: REASON -->` skips only the block's commands that start with it. Each skip
  is a skipped test here, reason included (`pytest -ra` lists them), and a prefix that matches nothing fails.
- `<!-- test-args: OVERRIDES -->` (or `<!-- test-args `PREFIX`: OVERRIDES -->`) appends Hydra overrides to the
  block's audio_cls commands, e.g. `debug=fast` to run a long training as one batch; an override whose key
  the command already sets is not appended.
- What a reader would fill in is filled in from PLACEHOLDERS (a run directory, a checkpoint, a folder of
  recordings); the files a snippet names (recording.wav, last.ckpt, ...) are made by `prepare()`.

How: audio_cls commands (`python -m audio_cls.X`, the installed `audio-cls-X` scripts, and `make`
targets, expanded by `make -n`) are parsed as the shell would (shlex) and run in one worker process that
calls each entry point's `main()`, as `python -m` does, so that the ~10 s import of torch and Lightning is
paid once instead of per command (the README's 23 steps take 1-2 minutes on 2 CPU cores). Other
commands run in bash. A command fails on a non-zero exit status, or when a run it wrote (metrics.json)
did not finish.
"""

from __future__ import annotations

import csv
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from importlib.metadata import distribution
from pathlib import Path
from urllib.parse import unquote

import pytest

from helpers import FSDD, REPO, write_tone_dataset

DOCS = [REPO / "README.md", *sorted((REPO / "docs").rglob("*.md"))]
SCRIPTS = {e.name: e.module for e in distribution("audio-cls").entry_points if e.group == "console_scripts"}

RUN = "2000-01-01_00-00-00_000000"  # the reader's earlier training run, made by prepare()
RUN_OVERRIDES = "debug=limit data.batch_size=16 model.channels=[16,16,16]"
CHECKPOINT = f"logs/train/runs/{RUN}/checkpoints/last.ckpt"
PLACEHOLDERS = {  # in bash blocks: what the reader would type instead
    "<the same overrides>": RUN_OVERRIDES,
    "<run>": RUN,
    "ckpt_path=...": f"ckpt_path={CHECKPOINT}",
    "data.root=...": "data.root=my_sounds",
    "/path/to/my_sounds": "my_sounds",
}
UNFILLED = re.compile(
    r"(?<!\?P)<[a-z][a-z _-]*>|\.\.\."
)  # <run>, <the same overrides>, ckpt_path=... (not (?P<group>))
FENCE = re.compile(r"^(\s*)```\s*([\w-]*)[^`]*$")  # ```lang [info]
MARKER = re.compile(r"^\s*<!--\s*(skip-test|test-args)\s*(?:`([^`]+)`)?\s*:\s*(.*?)\s*-->\s*$")
RUNNABLE = {"python": "python", "bash": "shell", "sh": "shell", "shell": "shell"}


@dataclass
class Block:
    doc: Path
    line: int  # of the opening fence
    lang: str
    code: str
    skip: str | None = None  # reason to skip the whole block
    skip_prefixes: dict[str, str] = field(default_factory=dict)  # command prefix -> reason
    args: list[tuple[str | None, str]] = field(default_factory=list)  # (command prefix or None, overrides)

    @property
    def where(self) -> str:
        return f"{name(self.doc)}:{self.line}"


@dataclass
class Command:
    where: str
    text: str  # as written (continuations joined, whitespace collapsed)
    block: Block


def name(doc: Path) -> str:
    return str(doc.relative_to(REPO)) if doc.is_relative_to(REPO) else doc.name


def parse(doc: Path) -> list[Block]:
    """The fenced blocks of a markdown file with the markers written just above them."""
    lines = doc.read_text(encoding="utf-8").splitlines()
    blocks, markers, i = [], [], 0
    while i < len(lines):
        marker, fence = MARKER.match(lines[i]), FENCE.match(lines[i])
        if marker:
            markers.append((i + 1, *marker.groups()))
        elif fence:
            indent, lang = fence.groups()
            end = next((j for j in range(i + 1, len(lines)) if lines[j].strip() == "```"), None)
            assert end is not None, f"{doc.name}:{i + 1}: a code fence that is never closed"
            code = "\n".join(
                line[len(indent) :] if line.startswith(indent) else line.lstrip() for line in lines[i + 1 : end]
            )
            block = Block(doc, i + 1, lang.lower(), code)
            for at, kind, prefix, text in markers:
                assert text, f"{doc.name}:{at}: {kind} needs a {'reason' if kind == 'skip-test' else 'value'}"
                if kind == "skip-test" and prefix:
                    block.skip_prefixes[prefix] = text
                elif kind == "skip-test":
                    block.skip = text
                else:
                    block.args.append((prefix, text))
            if markers:
                assert block.lang in RUNNABLE, f"{block.where}: a test marker above a block that never runs"
            blocks.append(block)
            markers, i = [], end
        elif markers:
            raise AssertionError(f"{doc.name}:{markers[0][0]}: a test marker must be right above a code fence")
        i += 1
    return blocks


def commands(block: Block) -> list[Command]:
    """The commands of a shell block: continuation lines joined, comments and blank lines dropped."""
    found, pending, start = [], "", 0
    for number, line in enumerate(block.code.splitlines(), start=block.line + 1):
        if not pending:
            start = number
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1] + " "
            continue
        text = " ".join((pending + line).split())
        pending = ""
        if text and not text.startswith("#"):
            found.append(Command(f"{name(block.doc)}:{start}", text, block))
    return found


def skipped_of(doc: Path) -> list[tuple[str, str, str]]:
    """(where, what, reason) of everything a document's markers skip."""
    result = []
    for block in parse(doc):
        if block.lang not in RUNNABLE:
            continue
        if block.skip:
            result.append((block.where, f"the {block.lang} block", block.skip))
            continue
        if RUNNABLE[block.lang] == "python":
            continue
        for command in commands(block):
            reason = next((r for p, r in block.skip_prefixes.items() if command.text.startswith(p)), None)
            if reason:
                result.append((command.where, re.sub(r"\s+#.*$", "", command.text), reason))
    return result


def fill(text: str) -> str:
    for placeholder, value in PLACEHOLDERS.items():
        text = text.replace(placeholder, value)
    return text


def entry_points(words: list[str]) -> list[tuple[str, list[str]]] | None:
    """[(module, arguments)] when the command runs audio_cls entry points; None for any other command."""
    if not words:
        return None
    if words[0] in SCRIPTS:
        return [(SCRIPTS[words[0]], words[1:])]
    if Path(words[0]).name.startswith("python") and words[1:2] == ["-m"] and words[2].startswith("audio_cls."):
        return [(words[2], words[3:])]
    if words[0] == "make":  # what the Makefile runs for these targets and variables
        dry = subprocess.run(
            ["make", "-n", "-s", "-f", str(REPO / "Makefile"), *words[1:]], capture_output=True, text=True, timeout=60
        )
        assert dry.returncode == 0, f"make -n {' '.join(words[1:])}: {dry.stderr.strip()}"
        expanded = [entry_points(shlex.split(line)) for line in dry.stdout.splitlines() if line.strip()]
        if expanded and all(expanded):
            return [step for steps in expanded for step in steps]
    return None


def with_args(arguments: list[str], extra: str) -> list[str]:
    keys = {a.split("=", 1)[0].lstrip("+~") for a in arguments if "=" in a}
    return arguments + [a for a in shlex.split(extra) if a.split("=", 1)[0].lstrip("+~") not in keys]


def plan(doc: Path) -> list[dict]:
    """The steps the worker runs for a document, in order (skipped commands left out)."""
    steps = []
    for block in parse(doc):
        if block.lang not in RUNNABLE or block.skip:
            continue
        if RUNNABLE[block.lang] == "python":
            assert not block.skip_prefixes and not block.args, f"{block.where}: python blocks take only skip-test"
            steps.append({"where": block.where, "kind": "python", "text": block.code})
            continue
        used = set()
        for command in commands(block):
            if any(command.text.startswith(p) for p in block.skip_prefixes):
                used.update(p for p in block.skip_prefixes if command.text.startswith(p))
                continue
            text = fill(command.text)
            words = shlex.split(text, comments=True)
            unfilled = UNFILLED.search(" ".join(words))
            assert unfilled is None, f"{command.where}: no value for the placeholder {unfilled[0]!r} (see PLACEHOLDERS)"
            entries = entry_points(words)
            extra = [a for prefix, a in block.args if prefix is None or command.text.startswith(prefix)]
            used.update(prefix for prefix, _ in block.args if prefix and command.text.startswith(prefix))
            if entries is None:
                assert not extra, f"{command.where}: test-args apply to audio_cls commands only"
                steps.append({"where": command.where, "kind": "shell", "text": text})
                continue
            for module, arguments in entries:
                for a in extra:
                    arguments = with_args(arguments, a)
                steps.append(
                    {
                        "where": command.where,
                        "kind": "entry",
                        "text": shlex.join(["python", "-m", module, *arguments]),
                        "module": module,
                        "argv": arguments,
                    }
                )
        stale = (set(block.skip_prefixes) | {p for p, _ in block.args if p}) - used
        assert not stale, f"{block.where}: markers name commands the block does not have: {sorted(stale)}"
    return steps


def prepare(scratch: Path) -> list[dict]:
    """The reader's files in `scratch`, and the steps that make the rest: a small FSDD in data/fsdd (4 speakers
    instead of 6; the commands use data/ relative to where they run), a folder dataset, recordings to label,
    and a short training run with its checkpoint (a whole-file CNN1d, as `make train` makes)."""
    recordings = scratch / "data" / "fsdd" / "recordings"
    recordings.mkdir(parents=True)
    for speaker in ("george", "jackson", "theo", "yweweler"):  # FSDD-Mix draws on each of its three splits
        for digit in range(10):
            for index in range(8):
                file = f"{digit}_{speaker}_{index}.wav"
                shutil.copy(FSDD / "recordings" / file, recordings / file)
    write_tone_dataset(scratch / "my_sounds", per_class=5, speakers=("ann", "bob", "cem", "dia", "eve"))
    (scratch / "recordings").mkdir()
    for file in ("3_nicolas_10.wav", "7_yweweler_12.wav", "0_lucas_20.wav"):
        shutil.copy(FSDD / "recordings" / file, scratch / "recordings" / file)
    shutil.copy(FSDD / "recordings" / "5_nicolas_40.wav", scratch / "one.wav")
    shutil.copy(FSDD / "recordings" / "8_yweweler_30.wav", scratch / "recording.wav")
    with (scratch / "list.csv").open("w", newline="", encoding="utf-8") as f:
        csv.writer(f).writerows(
            [
                ("path", "start", "end", "label"),
                ("recordings/3_nicolas_10.wav", "", "", "3"),
                ("recordings/7_yweweler_12.wav", "0.1", "0.4", "7"),
            ]
        )
    return [
        {
            "where": "prepare",
            "kind": "entry",
            "module": "audio_cls.train",
            "text": f"python -m audio_cls.train {RUN_OVERRIDES} hydra.run.dir=logs/train/runs/{RUN}",
            "argv": [*shlex.split(RUN_OVERRIDES), f"hydra.run.dir=logs/train/runs/{RUN}"],
        },
        {"where": "prepare", "kind": "python", "text": f"import shutil; shutil.copy({CHECKPOINT!r}, 'last.ckpt')"},
    ]


def run_document(scratch: Path, steps: list[dict], timeout: int = 600) -> list[dict]:
    """Run the steps in a worker process in `scratch`; one result per step."""
    (scratch / ".steps.json").write_text(json.dumps(steps), encoding="utf-8")
    (scratch / ".results.json").write_text("[]", encoding="utf-8")
    env = {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
        "MPLBACKEND": "Agg",
    }
    env.pop("AUDIO_CLS_ROOT", None)  # data/, logs/ and cache/ are those of the scratch folder
    with (scratch / ".worker.log").open("wb") as log:
        subprocess.run(
            [sys.executable, __file__, str(scratch)],
            cwd=scratch,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            timeout=timeout,
        )
    results = json.loads((scratch / ".results.json").read_text(encoding="utf-8"))
    if len(results) < len(steps):  # the worker itself died: say where
        tail = (scratch / ".worker.log").read_text(encoding="utf-8", errors="replace")[-3000:]
        results.append(
            {
                "where": steps[len(results)]["where"],
                "text": steps[len(results)]["text"],
                "code": "crash",
                "problems": ["the worker died"],
                "output": tail,
                "seconds": 0,
            }
        )
    return results


def failures(results: list[dict]) -> str:
    return "\n\n".join(
        f"{r['where']}: {r['text']}\n  exit status {r['code']}; {'; '.join(r['problems'])}\n{r['output']}"
        for r in results
        if r["code"] != 0 or r["problems"]
    )


# --- the tests ---------------------------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.timeout(900)
@pytest.mark.parametrize("doc", DOCS, ids=lambda d: str(d.relative_to(REPO)))
def test_runnable_snippets_run(doc, tmp_path):
    steps = plan(doc)
    if not steps:
        pytest.skip(f"{doc.name}: no runnable snippets")
    scratch = tmp_path / "reader"
    scratch.mkdir()
    results = run_document(scratch, prepare(scratch) + steps)  # prepare: ~10 s, paid by every document
    report = failures(results)
    assert not report, report
    timing = ", ".join(f"{r['where']} {r['seconds']:.0f} s" for r in results)
    print(f"{doc.name}: {len(results)} steps ran ({timing})")


SKIPPED = [(doc, *entry) for doc in DOCS for entry in skipped_of(doc)]


@pytest.mark.parametrize("doc,where,what,reason", SKIPPED, ids=[s[1] for s in SKIPPED])
def test_skipped_snippets_are_listed(doc, where, what, reason):
    pytest.skip(f"{where}: `{what}` not run: {reason}")


def test_the_convention_catches_what_it_promises(tmp_path):
    """A failing command or Python block, a run that did not finish, a stale marker and an unfilled
    placeholder each fail; skips and test-args apply where they say."""
    doc = tmp_path / "doc.md"
    doc.write_text(
        "\n".join(
            [
                "<!-- skip-test `make install`: needs the network -->",
                "<!-- test-args `python -m audio_cls.train`: debug=fast data.batch_size=8 -->",
                "```bash",
                "make install",
                "python -m audio_cls.train debug=limit \\",
                "  model=lstm   # a comment",
                "echo ok > made.txt",
                "false",
                "```",
                "",
                "```python",
                "raise SystemExit(3)",
                "```",
                "",
                "```",
                "text",
                "```",
                "<!-- skip-test: needs a GPU -->",
                "```python",
                "import nothing_here",
                "```",
            ]
        ),
        encoding="utf-8",
    )
    assert skipped_of(doc) == [
        ("doc.md:4", "make install", "needs the network"),
        ("doc.md:19", "the python block", "needs a GPU"),
    ]
    steps = plan(doc)
    assert [(s["kind"], s["text"]) for s in steps] == [
        ("entry", "python -m audio_cls.train debug=limit model=lstm data.batch_size=8"),
        ("shell", "echo ok > made.txt"),
        ("shell", "false"),
        ("python", "raise SystemExit(3)"),
    ]
    assert steps[0]["where"] == "doc.md:5"
    # The shell and Python steps, and a run that failed (its metrics.json as run_task writes it).
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    failed_run = (
        "import json, pathlib; p = pathlib.Path('r/metrics.json'); p.parent.mkdir(); "
        "p.write_text(json.dumps({'status': 'failed', 'error': 'x'}))"
    )
    results = run_document(scratch, steps[1:] + [{"where": "w", "kind": "python", "text": failed_run}])
    assert (scratch / "made.txt").read_text() == "ok\n"
    assert [(r["code"], r["problems"]) for r in results] == [
        (0, []),
        (1, []),
        (3, []),
        (0, ["r/metrics.json: status failed: x"]),
    ]
    for bad, message in (
        ("<!-- skip-test `make tset`: typo -->\n```bash\nmake test\n```", "does not have"),
        ("```bash\npython -m audio_cls.predict input=<file>\n```", "placeholder '<file>'"),
        ("<!-- skip-test: why -->\n\n```bash\nls\n```", "right above a code fence"),
        ("<!-- skip-test: -->\n```bash\nls\n```", "needs a reason"),
    ):
        doc.write_text(bad, encoding="utf-8")
        with pytest.raises(AssertionError, match=re.escape(message)):
            plan(doc)


# --- relative links --------------------------------------------------------------------------------
LINKED = [*DOCS, REPO / "benchmarks" / "RESULTS.md", REPO / "notebooks" / "README.md"]
INLINE_LINK = re.compile(r"\]\(\s*<?([^)\s>]+)>?(?:\s+[\"'(][^)]*)?\)")  # [text](target "title"), ![alt](target)
REFERENCE_LINK = re.compile(r"^\s{0,3}\[[^\]]+\]:\s*<?([^\s>]+)>?")  # [label]: target
CODE_SPAN = re.compile(r"(`+).*?\1")


def relative_links(doc: Path) -> list[tuple[int, str]]:
    """(line, target) of every relative link of a markdown file, outside code fences and code spans; web
    links (scheme://, mailto:) and links to an anchor of the same page (#...) left out."""
    links, fence = [], None
    for number, line in enumerate(doc.read_text(encoding="utf-8").splitlines(), start=1):
        opening = re.match(r"^\s{0,3}(`{3,}|~{3,})", line)
        if opening and (fence is None or opening[1].startswith(fence)):
            fence = None if fence else opening[1]
            continue
        if fence:
            continue
        text = CODE_SPAN.sub("", line)
        for target in [*INLINE_LINK.findall(text), *REFERENCE_LINK.findall(text)]:
            if not re.match(r"^([a-z][a-z0-9+.-]*:|#)", target, re.IGNORECASE):
                links.append((number, target))
    return links


def broken_links(doc: Path) -> list[str]:
    """The relative links of a markdown file whose file or folder does not exist (#fragment stripped; a link
    starting with / is from the repository root, as GitHub reads it)."""
    broken = []
    for number, target in relative_links(doc):
        path = unquote(target.split("#", 1)[0].split("?", 1)[0])
        resolved = REPO / path.lstrip("/") if path.startswith("/") else doc.parent / path
        if not resolved.exists():
            broken.append(f"{name(doc)}:{number}: {target} ({name(resolved.resolve())} does not exist)")
    return broken


@pytest.mark.parametrize("doc", LINKED, ids=lambda d: str(d.relative_to(REPO)))
def test_relative_links_resolve(doc):
    assert doc.is_file(), f"{name(doc)} is missing"
    broken = broken_links(doc)
    assert not broken, "broken links:\n" + "\n".join(broken)


def test_broken_links_are_found(tmp_path):
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "there.md").write_text("# There\n", encoding="utf-8")
    doc = tmp_path / "docs" / "doc.md"
    doc.write_text(
        "\n".join(
            [
                "[ok](there.md) [ok, anchor](there.md#there) [same page](#top) [web](https://example.com/nowhere.md)",
                '[ok, title](there.md "There") [ok, folder](../docs) ![missing image](img/plot.png)',
                "`[in a code span](nowhere.md)` [missing](gone.md#part) [mail](mailto:someone@example.com)",
                "```",
                "[in a fence](nowhere.md)",
                "```",
                "[missing reference]: ../nothing.md",
            ]
        ),
        encoding="utf-8",
    )
    assert [target for _, target in relative_links(doc)] == [
        "there.md",
        "there.md#there",
        "there.md",
        "../docs",
        "img/plot.png",
        "gone.md#part",
        "../nothing.md",
    ]
    assert [b.split(" (")[0] for b in broken_links(doc)] == [
        "doc.md:2: img/plot.png",
        "doc.md:3: gone.md#part",
        "doc.md:7: ../nothing.md",
    ]


# --- the worker: `python tests/test_docs.py SCRATCH` --------------------------------------------------
def _metrics(scratch: Path) -> dict[Path, int]:
    return {p: p.stat().st_mtime_ns for p in scratch.rglob("metrics.json")}


def _execute(step: dict) -> int:
    if step["kind"] == "shell":
        return subprocess.run(["bash", "-c", step["text"]]).returncode
    try:
        if step["kind"] == "python":
            exec(compile(step["text"], step["where"], "exec"), {"__name__": "__main__"})
        else:  # what `python -m audio_cls.X ARGS` does, in this process
            import importlib

            module = importlib.import_module(step["module"])
            sys.argv = [module.__file__, *step["argv"]]
            module.main()
        return 0
    except SystemExit as exit_:
        return exit_.code if isinstance(exit_.code, int) else (0 if exit_.code is None else 1)
    except BaseException:  # noqa: BLE001 - any error of a snippet is its result
        import traceback

        traceback.print_exc()
        return 1


def _work(scratch: Path) -> None:
    steps = json.loads((scratch / ".steps.json").read_text(encoding="utf-8"))
    log = scratch / ".worker.log"
    results = []
    for step in steps:
        before, started = _metrics(scratch), time.perf_counter()
        print(f"\n===== {step['where']}: {step['text'][:200]}", flush=True)
        offset = log.stat().st_size
        code = _execute(step)
        sys.stdout.flush(), sys.stderr.flush()
        problems = []
        for path, mtime in _metrics(scratch).items():
            if before.get(path) != mtime:
                result = json.loads(path.read_text(encoding="utf-8"))
                if result.get("status") != "finished":
                    problems.append(
                        f"{path.relative_to(scratch)}: status {result.get('status')}: {result.get('error')}"
                    )
        output = log.read_bytes()[offset:].decode("utf-8", errors="replace")
        results.append(
            {
                "where": step["where"],
                "text": step["text"],
                "code": code,
                "problems": problems,
                "seconds": time.perf_counter() - started,
                "output": output[-3000:] if code != 0 or problems else "",
            }
        )
        (scratch / ".results.json").write_text(json.dumps(results), encoding="utf-8")
        os.chdir(scratch)  # a snippet may have moved elsewhere


if __name__ == "__main__":
    _work(Path(sys.argv[1]).resolve())
