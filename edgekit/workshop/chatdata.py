"""Chat data for distilling an Instruct teacher: prompts and the teacher's own greedy answers.

Prompts come from what is available offline: the teacher writes questions itself (self-instruct
open questions and simple quiz questions, one topic per question, from the recipe's topic list)
and tasks are built from paragraphs of the training text (never its held-out tail). The recipe's
fixed `heldout_prompts` plus a random share of the rest are held out: never trained on, and any
training prompt that shares half its words with a held-out one is dropped. Answers are generated
greedily by the teacher exported to ONNX (fp32) and run with edgekit's own runtime, not PyTorch
eager (measured about 20x faster here). Everything is cached under $EDGEKIT_HOME/chatdata/<key>/
(key = teacher + settings) and appended as it is produced, so an interrupted run resumes. Times are seconds.
May import: stdlib, numpy, edgekit; torch/transformers via edgekit.workshop modules.
"""

from __future__ import annotations

import hashlib
import json
import random
import re
import shutil
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Callable

from edgekit.core.errors import ConfigError
from edgekit.core.paths import edgekit_home
from edgekit.device.chat_examples import prompt_text, read_examples
from edgekit.workshop.chat_prompts import CLASSIFY_TASKS, CORPUS_TASKS, classify_prompts, corpus_prompts  # noqa: F401

QUESTION_REQUEST = "Write one short question that a curious person might ask about {topic}. Write only the question."
# Simple factual questions with short answers: the teacher answers them by restating the question
# ("The language spoken in Spain is Spanish."), the habit a layer-dropped student loses first.
FACT_REQUEST = "Write one simple quiz question about {topic} that has a short answer. Write only the question."
# A question about asking questions ("What would a curious person want to know about ...?").
# "curious" alone too: in the teacher's questions it meant a question about questions far more often than
# a real one ("Is there anything about vitamins that would make me curious?").
META = re.compile(r"\b(questions?|quiz|ask|asks|asking|curious)\b", re.I)
QUESTION_WORDS = re.compile(r"^(what|what's|why|how|who|whom|whose|which|when|where|is|are|was|were|do|does|did|can|"
                            r"could|would|should|will|have|has)\b", re.I)
HELDOUT_FILE = "heldout.jsonl"  # the held-out prompts with the teacher's answers, in the cache folder
GENERATOR_SEQUENCE = 512  # tokens: prompt + answer of one generated example


@dataclass
class ChatSettings:
    """What determines the generated data (hashed into the cache key)."""

    teacher_key: str
    topics: list[str]
    self_instruct: int
    corpus_prompts: int
    corpus_files: list[str]
    heldout_prompts: list[str]
    heldout_fraction: float = 0.1
    answer_tokens: int = 96
    seed: int = 0
    eval_fraction: float = 0.05  # held-out tail of each corpus file: no corpus task is built on it
    version: int = 2  # bump when the way data is made changes (2: quoted questions kept, fact questions)
    fact_questions: int = 0  # simple quiz questions the teacher writes (FACT_REQUEST), one topic each
    files_sha256: list[str] = field(default_factory=list)
    # one-word judgements (CLASSIFY_TASKS) on short training passages
    classify_prompts: int = field(default=0, metadata={"added_later": True})

    def key(self) -> str:
        """Hash of the settings; a field marked `added_later` counts only when it differs from its default,
        so data generated before it existed keeps its key."""
        d = asdict(self)
        for f in fields(self):
            if f.metadata.get("added_later") and d[f.name] == f.default:
                d.pop(f.name)
        return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:16]


@dataclass
class ChatData:
    train: list[dict]  # {"prompt", "answer", "finished", "source"}
    heldout: list[dict]
    folder: Path
    generated_seconds: float


def _words(text: str) -> set[str]:
    return set(re.findall(r"[a-z0-9]+", text.lower()))


def _overlaps(prompt: str, held: list[set[str]]) -> bool:
    w = _words(prompt)
    return any(len(w & h) / max(1, len(w | h)) >= 0.5 for h in held)


def clean_question(text: str) -> str | None:
    """The question in the first line of a generated text, or None when there is no usable one.
    A question the teacher wraps in a sentence ('A curious person might ask, "Why ...?"',
    'Question: Why ...?') is taken out of it: the last piece after a quote, colon or sentence end,
    when it starts with a question word and ends the line; else the whole line is the question.
    A question about asking questions is dropped."""
    line = text.strip().split("\n")[0].strip().strip('"\u201c\u201d').strip()
    pieces = [p.strip() for p in re.split(r'["\u201c\u201d]|:\s+|(?<=[.!])\s+', line) if p.strip()]
    last = pieces[-1] if pieces else ""
    q = last if last[:1].isupper() and QUESTION_WORDS.match(last) and last.endswith("?") else line
    if not q.endswith("?") or not 12 <= len(q) <= 200 or META.search(q):
        return None
    return q


def split_prompts(prompts: list[dict], fixed_heldout: list[str], fraction: float, seed: int) -> list[dict]:
    """Mark each prompt train/heldout; drop duplicates and training prompts too close to a held-out one."""
    seen, out = set(), []
    for p in [{"prompt": q, "source": "fixed"} for q in fixed_heldout] + prompts:
        norm = " ".join(sorted(_words(p["prompt"])))
        if norm in seen:
            continue
        seen.add(norm)
        out.append(dict(p))
    rng = random.Random(seed + 1)
    for p in out:
        p["split"] = "heldout" if p["source"] == "fixed" or rng.random() < fraction else "train"
    held = [_words(p["prompt"]) for p in out if p["split"] == "heldout"]
    return [p for p in out if p["split"] == "heldout" or not _overlaps(p["prompt"], held)]


class TeacherGenerator:
    """The teacher as an fp32 ONNX decoder run by edgekit's device runtime (cached per teacher)."""

    def __init__(self, teacher_path: Path, model, tokenizer, cache: Path, log: Callable[[str], None],
                 workers: int = 1):
        from edgekit.device.onnx_model import open_onnx
        from edgekit.device.tokenizer import TextTokenizer

        onnx_path = cache / "model.onnx"
        if not (onnx_path.is_file() and (cache / "tokenizer.json").is_file()):
            from edgekit.workshop.onnx_export import export_onnx

            log(f"exporting the teacher {teacher_path} to ONNX for fast generation (once per teacher) -> {cache}")
            tmp = cache.with_name(cache.name + ".partial")
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
            export_onnx(model, tmp / "model.onnx", GENERATOR_SEQUENCE)
            tokenizer.save_pretrained(tmp)  # tokenizer.json for the device tokenizer (any teacher source)
            shutil.rmtree(cache, ignore_errors=True)
            tmp.replace(cache)
        eos = [i for i in {tokenizer.eos_token_id, getattr(model.generation_config, "eos_token_id", None)}
               if isinstance(i, int)]
        self.tokenizer = TextTokenizer.from_file(cache / "tokenizer.json", eos)
        # decoding one sequence is bound by memory traffic: N one-thread sessions side by side outrun one
        # N-thread session (each session holds its own copy of the weights)
        self.models = [open_onnx(onnx_path, {"model": {"max_sequence_length": GENERATOR_SEQUENCE}},
                                 threads=1 if workers > 1 else 0) for _ in range(max(1, workers))]
        self.template = tokenizer.chat_template
        self.bos, self.eos = tokenizer.bos_token or "", tokenizer.eos_token or ""

    def map(self, fn: Callable, items: list) -> list:
        """[fn(model, item)] in order, the items spread over the sessions (threads: onnxruntime
        releases the GIL while it runs)."""
        if len(self.models) == 1:
            return [fn(self.models[0], item) for item in items]
        import queue
        from concurrent.futures import ThreadPoolExecutor

        free: queue.Queue = queue.Queue()
        for m in self.models:
            free.put(m)

        def run(item):
            m = free.get()
            try:
                return fn(m, item)
            finally:
                free.put(m)

        with ThreadPoolExecutor(len(self.models)) as pool:
            return list(pool.map(run, items))

    def answer(self, prompt: str, max_new_tokens: int, sampler=None, model=None) -> tuple[str, bool]:
        """(answer text, finished with the end-of-turn token) for one user turn."""
        from edgekit.device.generate import drain, generate
        from edgekit.device.sampling import Sampler

        ids = self.tokenizer.encode(prompt_text(prompt, self.template, self.bos, self.eos), add_special_tokens=False)
        budget = min(max_new_tokens, GENERATOR_SEQUENCE - len(ids))
        if budget < 8:
            return "", False
        result = drain(generate(model or self.models[0], self.tokenizer, ids, budget, sampler or Sampler()))
        return result.text.strip(), result.finish_reason == "stop"


def generator_workers() -> int:
    """Sessions answering side by side: one per CPU this process may use, at most 4 (memory: each holds
    the teacher's fp32 weights); EDGEKIT_GENERATOR_WORKERS overrides."""
    import os

    env = os.environ.get("EDGEKIT_GENERATOR_WORKERS", "")
    if env.isdigit() and int(env) > 0:
        return int(env)
    return max(1, min(4, len(os.sched_getaffinity(0))))


def _append(path: Path, rec: dict) -> None:
    with path.open("a", encoding="utf-8") as f:
        f.write(json.dumps(rec, ensure_ascii=False) + "\n")


def _done(path: Path) -> list[dict]:
    """Records appended so far; a last line cut short by a killed run is dropped, not an error."""
    if not path.is_file() or not path.stat().st_size:
        return []
    raw = path.read_bytes()
    if not raw.endswith(b"\n"):
        path.write_bytes(raw[: raw.rfind(b"\n") + 1])
    return read_examples(path) if path.stat().st_size else []


def teacher_questions(gen: TeacherGenerator, s: ChatSettings, folder: Path, bar,
                      kind: str = "self-instruct") -> list[dict]:
    """Questions the teacher writes, one topic at a time (`kind` "self-instruct": QUESTION_REQUEST,
    s.self_instruct of them; "fact": FACT_REQUEST, s.fact_questions); appended to a file as they come."""
    from edgekit.device.sampling import Sampler

    kinds = {"self-instruct": (QUESTION_REQUEST, s.self_instruct, "questions.jsonl", 0),
             "fact": (FACT_REQUEST, s.fact_questions, "facts.jsonl", 7_919)}  # salt: other samples than self-instruct's
    if kind not in kinds:
        raise ValueError(f"unknown question kind {kind!r}; expected one of {sorted(kinds)}")
    request, count, name, salt = kinds[kind]
    path = folder / name
    out = _done(path)
    n = 1 + max((r.get("n", -1) for r in out), default=-1)  # a resumed run continues after the last try kept
    bar.update(len(out))

    def ask(model, k):
        return k, gen.answer(request.format(topic=s.topics[k % len(s.topics)]), 40,
                             Sampler(temperature=0.7, top_p=0.9, seed=s.seed * 1_000_003 + k + salt), model)[0]

    while len(out) < count and n < 3 * count:
        batch = list(range(n, n + min(4 * len(gen.models), count - len(out))))
        n = batch[-1] + 1
        for k, text in gen.map(ask, batch):
            q = clean_question(text)
            if q is not None and len(out) < count:
                rec = {"prompt": q, "source": kind, "topic": s.topics[k % len(s.topics)], "n": k}
                out.append(rec)
                _append(path, rec)
                bar.update(1)
    return out


def build_chat_data(s: ChatSettings, teacher_path: Path, model, tokenizer, log: Callable[[str], None] = print,
                    progress: bool = True, clock: Callable[[], float] = time.monotonic) -> ChatData:
    """Generate (or load from the cache) the prompts and the teacher's answers."""
    from tqdm.auto import tqdm

    if not tokenizer.chat_template:
        raise ConfigError(f"teacher {teacher_path} has no chat template, so it cannot be distilled as a chat "
                          "assistant: use a recipe with [chat] enabled = false")
    folder = edgekit_home() / "chatdata" / s.key()
    folder.mkdir(parents=True, exist_ok=True)
    answers_path = folder / "answers.jsonl"
    meta_path = folder / "meta.json"
    if meta_path.is_file():
        return _load(folder, json.loads(meta_path.read_text()))
    t0 = clock()
    gen = TeacherGenerator(teacher_path, model, tokenizer, edgekit_home() / "chatdata" / f"generator-{s.teacher_key}",
                           log, workers=generator_workers())
    from edgekit.workshop.textdata import expand_paths

    prompts_path = folder / "prompts.jsonl"
    if not prompts_path.is_file():
        with tqdm(total=s.self_instruct + s.fact_questions, desc="teacher writes questions", unit="q",
                  disable=not progress) as bar:
            questions = teacher_questions(gen, s, folder, bar) + teacher_questions(gen, s, folder, bar, "fact")
        files = expand_paths(s.corpus_files)
        corpus = corpus_prompts(files, s.corpus_prompts, s.eval_fraction, s.seed)
        corpus += classify_prompts(files, s.classify_prompts, s.eval_fraction, s.seed) if s.classify_prompts else []
        from edgekit.device.chat_examples import write_examples

        write_examples(prompts_path, split_prompts(questions + corpus, s.heldout_prompts, s.heldout_fraction, s.seed))
    prompts = read_examples(prompts_path)
    done = {r["prompt"] for r in _done(answers_path)}
    todo = [p for p in prompts if p["prompt"] not in done]
    log(f"chat data: {len(prompts)} prompts ({sum(p['split'] == 'heldout' for p in prompts)} held out), "
        f"{len(done)} answered before, {len(todo)} to answer -> {folder}")
    with tqdm(total=len(todo), desc="teacher answers", unit="answer", disable=not progress) as bar:
        step = 4 * len(gen.models)
        for i in range(0, len(todo), step):  # appended a few at a time, in prompt order: resumable
            chunk = todo[i: i + step]
            for p, (text, finished) in zip(chunk, gen.map(lambda m, p: gen.answer(p["prompt"], s.answer_tokens,
                                                                                    model=m), chunk)):
                _append(answers_path, {**p, "answer": text, "finished": finished})
            bar.update(len(chunk))
    meta = {"settings": asdict(s), "generated_seconds": round(clock() - t0, 1), "generator": "onnxruntime fp32 "
            "(the teacher exported by edgekit), greedy"}
    meta_path.write_text(json.dumps(meta, indent=2))
    return _load(folder, meta)


def _load(folder: Path, meta: dict) -> ChatData:
    rows = [r for r in read_examples(folder / "answers.jsonl") if r.get("answer")]
    if not (folder / HELDOUT_FILE).is_file():  # what `edgekit eval` scores by default
        from edgekit.device.chat_examples import write_examples

        write_examples(folder / HELDOUT_FILE, [r for r in rows if r["split"] == "heldout"])
    return ChatData(train=[r for r in rows if r["split"] == "train"], heldout=[r for r in rows if r["split"] == "heldout"],
                    folder=folder, generated_seconds=meta.get("generated_seconds", 0.0))


def tokenized(tokenizer, examples: list[dict], max_tokens: int) -> list:
    """ChatIds of each example (the answer closed with end-of-turn only when the teacher finished it),
    cut to `max_tokens`; examples whose prompt alone fills the window are skipped."""
    from edgekit.device.chat_examples import example_ids

    encode = lambda t: tokenizer(t, add_special_tokens=False, verbose=False).input_ids  # noqa: E731
    out = []
    for ex in examples:
        ids = example_ids(encode, ex["prompt"], ex["answer"], tokenizer.chat_template,
                          tokenizer.eos_token_id if ex.get("finished", True) else None,
                          tokenizer.bos_token or "", tokenizer.eos_token or "")
        if ids.answer_start < max_tokens - 8:
            out.append(type(ids)(ids.ids[:max_tokens], ids.answer_start))
    return out


def pad_batch(items: list, pad_id: int):
    """(ids [B, L], answer mask over targets [B, L-1]) for a batch of ChatIds, right-padded."""
    import torch

    length = max(len(c.ids) for c in items)
    ids = torch.full((len(items), length), pad_id, dtype=torch.long)
    mask = torch.zeros((len(items), length - 1), dtype=torch.bool)
    for i, c in enumerate(items):
        ids[i, : len(c.ids)] = torch.tensor(c.ids)
        mask[i, c.answer_start - 1: len(c.ids) - 1] = True  # targets at positions >= answer_start
    return ids, mask


def chat_scores(model, items: list, batch_size: int = 8) -> dict:
    """Answer perplexity and teacher-forced top-1 agreement with the reference answers (PyTorch)."""
    import math

    import torch

    nll, hits, count = 0.0, 0, 0
    device = next(model.parameters()).device
    with torch.no_grad():
        for i in range(0, len(items), batch_size):
            ids, mask = pad_batch(items[i: i + batch_size], 0)
            ids, mask = ids.to(device), mask.to(device)
            logits = model(input_ids=ids[:, :-1]).logits.float()
            targets = ids[:, 1:]
            lp = torch.log_softmax(logits, -1).gather(-1, targets[..., None])[..., 0]
            nll -= float(lp[mask].sum())
            hits += int((logits.argmax(-1) == targets)[mask].sum())
            count += int(mask.sum())
    if count == 0:
        raise ConfigError("no held-out chat answer tokens to score")
    return {"perplexity": math.exp(nll / count), "agreement": hits / count, "tokens": count}


def heldout_file(s: ChatSettings) -> Path | None:
    """The held-out examples file for these settings, when the data has been generated on this machine."""
    path = edgekit_home() / "chatdata" / s.key() / HELDOUT_FILE
    if not path.is_file() and (path.parent / "meta.json").is_file():
        _load(path.parent, {})
    return path if path.is_file() else None
