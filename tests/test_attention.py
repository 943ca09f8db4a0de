"""Attention backends: detection of xFormers that really runs, switching through diffusers' API,
and sdpa == math numerically. xFormers is not installed on the test machines, so its detection
is driven with fake modules."""

import importlib.util
import json
import logging
import sys
import types
from pathlib import Path

import pytest
import torch

from selfcorrect.diffusion import attention
from selfcorrect.diffusion.attention import (
    AttentionBackendError,
    active_backend,
    describe_backends,
    resolve_backend,
    set_attention_backend,
    xformers_problem,
)
from selfcorrect.diffusion.testing import tiny_sd_pipeline
from selfcorrect.errors import SelfcorrectError


@pytest.fixture(autouse=True)
def fresh_xformers_cache():
    # The probe's answer is cached per process; each test sees its own (faked) xFormers.
    xformers_problem.cache_clear()
    yield
    xformers_problem.cache_clear()


@pytest.fixture
def no_xformers(monkeypatch):
    monkeypatch.setitem(sys.modules, "xformers", None)  # `import xformers` raises ImportError
    monkeypatch.setitem(sys.modules, "xformers.ops", None)


@pytest.fixture
def pipe():
    return tiny_sd_pipeline()


def _unet_output(unet):
    # (B, 4, 16, 16) latents and (B, tokens, 32) text states for the tiny UNet, on its device.
    g = torch.Generator().manual_seed(0)
    sample = torch.randn(2, 4, 16, 16, generator=g).to(unet.device, unet.dtype)
    text = torch.randn(2, 16, 32, generator=g).to(unet.device, unet.dtype)
    with torch.no_grad():
        return unet(sample, torch.tensor([10, 500], device=unet.device), encoder_hidden_states=text).sample


def test_sdpa_and_math_give_the_same_unet_output(pipe, no_xformers):
    assert set_attention_backend(pipe.unet, "math") == "math"
    reference = _unet_output(pipe.unet)
    assert set_attention_backend(pipe.unet, "sdpa") == "sdpa"
    torch.testing.assert_close(_unet_output(pipe.unet), reference, atol=1e-5, rtol=1e-4)


@pytest.mark.gpu
def test_every_backend_that_runs_on_cuda_agrees_with_math(pipe):
    unet = pipe.unet.to("cuda", torch.float16)
    backends = ["sdpa"] + ([] if xformers_problem(str(unet.device)) else ["xformers"])
    assert set_attention_backend(unet, "auto") == backends[-1]
    assert set_attention_backend(unet, "math") == "math"
    reference = _unet_output(unet)
    for name in backends:
        assert set_attention_backend(unet, name) == name
        torch.testing.assert_close(_unet_output(unet), reference, atol=2e-2, rtol=2e-2)


def test_every_diffusers_model_of_a_pipeline_is_switched_and_the_choice_logged(pipe, no_xformers, caplog):
    with caplog.at_level(logging.INFO, logger=attention.__name__):
        assert set_attention_backend(pipe, "math") == "math"
    assert "attention backend: math (requested math)" in caplog.text
    for model in (pipe.unet, pipe.vae):
        assert {type(p).__name__ for p in model.attn_processors.values()} == {"AttnProcessor"}
    assert set_attention_backend(pipe, "auto") == "sdpa"  # no xFormers here
    assert {type(p).__name__ for p in pipe.vae.attn_processors.values()} == {"AttnProcessor2_0"}


def test_dispatch_models_are_switched_with_set_attention_backend(no_xformers):
    # Newer diffusers transformers (Flux, ...) route attention through attention_dispatch.
    from diffusers import FluxTransformer2DModel

    torch.manual_seed(0)
    model = FluxTransformer2DModel(
        patch_size=1,
        in_channels=4,
        num_layers=1,
        num_single_layers=1,
        attention_head_dim=16,
        num_attention_heads=2,
        joint_attention_dim=32,
        pooled_projection_dim=32,
        axes_dims_rope=[4, 4, 8],
    )
    g = torch.Generator().manual_seed(0)
    inputs = {  # 16 image tokens, 8 text tokens
        "hidden_states": torch.randn(1, 16, 4, generator=g),
        "encoder_hidden_states": torch.randn(1, 8, 32, generator=g),
        "pooled_projections": torch.randn(1, 32, generator=g),
        "img_ids": torch.randn(16, 3, generator=g),
        "txt_ids": torch.randn(8, 3, generator=g),
        "timestep": torch.tensor([1.0]),
    }
    outputs = {}
    for name in ("math", "sdpa"):
        assert set_attention_backend(model, name) == name
        with torch.no_grad():
            outputs[name] = model(**inputs).sample
    torch.testing.assert_close(outputs["sdpa"], outputs["math"], atol=1e-5, rtol=1e-4)


def test_processors_with_weights_are_not_replaced(pipe, no_xformers):
    from diffusers.models.attention_processor import IPAdapterAttnProcessor2_0

    pipe.unet.set_attn_processor(IPAdapterAttnProcessor2_0(hidden_size=64, cross_attention_dim=32))
    with pytest.raises(
        AttentionBackendError, match="unet uses attention processors IPAdapterAttnProcessor2_0"
    ):
        set_attention_backend(pipe, "math")
    # Nothing was switched, not even the VAE, which comes before the UNet.
    assert {type(p).__name__ for p in pipe.vae.attn_processors.values()} == {"AttnProcessor2_0"}


def test_unknown_backend_lists_the_choices(pipe):
    with pytest.raises(AttentionBackendError, match="choose one of: auto, xformers, sdpa, math"):
        set_attention_backend(pipe, "flash")


def test_requesting_missing_xformers_names_the_extra(pipe, no_xformers):
    with pytest.raises(AttentionBackendError) as e:
        set_attention_backend(pipe, "xformers")
    assert isinstance(e.value, SelfcorrectError)
    assert "xFormers is not installed" in str(e.value)
    assert 'pip install "selfcorrect[xformers]"' in str(e.value)
    assert active_backend(pipe) == "sdpa"  # nothing was changed


def test_xformers_that_does_not_load_for_this_torch_is_reported(tmp_path, monkeypatch):
    # A wheel built for another torch: its compiled extension fails to load on import.
    package = tmp_path / "xformers"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "ops.py").write_text("raise OSError('_C.so: undefined symbol: _ZN3c104cuda9SetDevice')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    for name in ("xformers", "xformers.ops"):
        monkeypatch.delitem(sys.modules, name, raising=False)
    problem = xformers_problem("cuda")
    assert problem.startswith(f"xFormers is installed but does not load with torch {torch.__version__}")
    assert "undefined symbol" in problem


def test_xformers_kernels_that_do_not_run_are_reported():
    def memory_efficient_attention(q, k, v):
        raise NotImplementedError("No operator found for `memory_efficient_attention_forward`")

    ops = types.SimpleNamespace(memory_efficient_attention=memory_efficient_attention)
    problem = attention._probe_kernels(ops, "cpu")
    assert "imports but its kernels do not run" in problem
    assert "NotImplementedError: No operator found" in problem


def test_xformers_is_probed_once_per_device(monkeypatch):
    calls = []
    fake = types.ModuleType("xformers.ops")
    fake.memory_efficient_attention = lambda q, k, v: calls.append(q.device) or q
    monkeypatch.setitem(sys.modules, "xformers", types.ModuleType("xformers"))
    monkeypatch.setitem(sys.modules, "xformers.ops", fake)
    # On a CPU the kernels are never tried: xFormers is CUDA-only.
    assert xformers_problem("cpu") == "xFormers kernels run on CUDA only, and the device is cpu"
    assert resolve_backend("auto", "cpu") == "sdpa"
    assert calls == []
    # On CUDA a working probe makes `auto` pick xFormers, and the answer is cached.
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(attention, "_probe_kernels", lambda ops, device: calls.append(device))
    assert resolve_backend("auto", "cuda") == "xformers"
    assert resolve_backend("xformers", "cuda") == "xformers"
    assert calls == ["cuda"]


def test_describe_backends_says_what_runs_and_why_not(no_xformers):
    backends = describe_backends("cpu")
    assert backends["auto"] == {"available": True, "detail": "sdpa"}
    assert backends["xformers"]["available"] is False
    assert "not installed" in backends["xformers"]["detail"]
    assert backends["sdpa"]["available"] and backends["math"]["available"]


def test_benchmark_quick_run_writes_json_and_markdown(tmp_path):
    path = Path(__file__).resolve().parents[1] / "benchmarks" / "attention.py"
    spec = importlib.util.spec_from_file_location("attention_benchmark", path)
    benchmark = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(benchmark)
    threads = torch.get_num_threads()
    try:
        record = benchmark.main(["--quick", "--device", "cpu", "--threads", "1", "--out-dir", str(tmp_path)])
    finally:
        torch.set_num_threads(threads)
    results = {r["backend"]: r for r in record["models"][0]["results"]}
    assert set(results) == {"math", "sdpa"}  # no xFormers on a CPU
    assert results["math"]["speedup_vs_math"] == 1.0
    assert results["sdpa"]["max_abs_diff_vs_math"] < 1e-4
    assert json.loads((tmp_path / "attention_cpu_quick.json").read_text())["command"] == record["command"]
    markdown = (tmp_path / "attention_cpu_quick.md").read_text()
    assert "| sdpa |" in markdown and "Not measured: xformers" in markdown
