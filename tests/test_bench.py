"""The benchmark's machinery on tiny models (no timing assertions), and the fast paths it
measures: oneDNN linears and reduced-precision matmul attention in PyTorch, ``make_fast``
in Keras. Speed itself is checked by ``python -m crosscheck.bench``, never here."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import d2v_tf
import d2v_torch
from crosscheck import bench
from crosscheck.cases import all_cases
from crosscheck.runner import check_case, max_abs_diff, run_torch
from d2v_common.spec import weight_spec
from d2v_torch import layers


@pytest.mark.slow
def test_bench_rows_tables_and_plot(tmp_path):
    workload = bench.WORKLOADS["vision-cls-b8x224"]
    peak = bench.measure_gemm_peak(bench.PEAK_SIZES["tiny"], repeats=1)
    assert peak["n"] == 256 and peak["fp32_gflops"] > 0 and peak["bf16_gflops"] > 0
    result = bench.run_workload(workload, "tiny", list(bench.ROWS), repeats=1, warmup=1, peak=peak)
    rows = result["rows"]
    assert result["gflop"] > 0
    for key, row in rows.items():  # model FLOPs over the row's time, over the peak of its precision
        precision_peak = peak["bf16_gflops" if "bf16" in key else "fp32_gflops"]
        expected = result["gflop"] / (row["median_ms"] / 1e3) / precision_peak
        assert row["peak_fraction"] == pytest.approx(expected), key
    assert set(rows) == set(bench.ROWS) and not result["skipped"]
    for key, row in rows.items():
        assert len(row["times_ms"]) == 1 and row["median_ms"] > 0, key
        # every row computes the same function: float32 rows agree, bfloat16 rows roughly
        assert row["rel_err"] <= {"bf16": 3e-2, "int8": 0.1}.get(key.split("-")[-1], 1e-5), (key, row["rel_err"])
    assert 0 < rows["ort-int8"]["rel_err_vs_fp32"] <= 0.1 and 0 <= rows["ort-int8"]["argmax_agreement"] <= 1
    for key in ("torch-fp32", "torch-bf16", "keras-eager", "keras-xla", "ort-fp32", "ort-int8"):
        assert rows[key]["vs_hf"] > 0
    assert result["keras_best"] in bench.KERAS_ROWS
    text = bench.run_workload(bench.WORKLOADS["text-b8x128"], "tiny", ["torch-fp32", "hf-tf-xla"], 1, 1)
    assert list(text["rows"]) == ["torch-fp32"] and "no TF" in text["skipped"]["hf-tf-xla"]

    report = {"threads": 1, "repeats": 1, "warmup": 1, "size": "tiny", "gemm_peak": peak, "workloads": [result, text],
              "loading": {}}
    report["targets"] = bench.targets(report["workloads"], report["loading"])
    table = bench.format_report(report)
    assert f"fp32 {peak['fp32_gflops']:.0f} GFLOP/s" in table and "of peak" in table
    for key in bench.ROWS:
        assert bench.ROWS[key][0] in table
    measured = {t["target"]: t for t in report["targets"]}
    assert measured["d2v keras from_pretrained seconds"]["met"] is None  # not run: not claimed
    bench.plot(report, str(tmp_path / "b.png"))
    assert (tmp_path / "b.png").read_bytes()[:4] == b"\x89PNG"


def test_gemm_peak_measures_bf16_only_for_bf16_rows():
    """int8 and fp32 runs skip the bfloat16 peak (minutes on a CPU without bf16 instructions)."""
    assert bench.peak_precisions(["torch-fp32", "torch-int8", "keras-int8"]) == ("fp32",)
    assert bench.peak_precisions(["torch-fp32", "keras-bf16"]) == ("fp32", "bf16")
    peak = bench.measure_gemm_peak(64, repeats=1, precisions=("fp32",))
    assert set(peak) == {"n", "fp32_gflops"} and peak["fp32_gflops"] > 0
    assert bench._peak_fraction("torch-fp32", 1.0, 2.0, peak) == 2.0 / peak["fp32_gflops"]
    assert bench._peak_fraction("torch-bf16", 1.0, 2.0, peak) is None
    report = {"threads": 1, "repeats": 1, "warmup": 1, "size": "tiny", "gemm_peak": peak, "workloads": [],
              "loading": {}}
    report["targets"] = bench.targets(report["workloads"], report["loading"])
    header = next(line for line in bench.format_report(report).splitlines() if "GEMM peak" in line)
    assert "fp32" in header and "bf16" not in header


def test_workload_flops_count_every_matmul():
    """Text encoder FLOPs: 2 x (linear weights) per token plus 4 x length x hidden per token and
    layer for the two attention products (the embeddings do no matmul)."""
    workload = bench.WORKLOADS["text-b8x128"]
    config = workload.config("tiny")
    b, n, h, i, layers = workload.batch, workload.tiny_length, config.hidden_size, config.intermediate_size, 2
    per_layer = 2 * (4 * h * h + 2 * h * i) * b * n + 4 * b * n * n * h
    pooler = 2 * h * h * b
    assert bench.workload_gflop(workload, "tiny") * 1e9 == per_layer * layers + pooler


def test_workload_flops_include_the_onednn_linears():
    """Issue 26 item 9: at base size the Linear layers run on oneDNN, which
    ``torch.utils.flop_counter`` does not see; the count is the model's, by hand: 12 layers of
    2 x (4 h^2 + 2 h i) per token plus 4 n h per token for the attention products, and the pooler."""
    workload = bench.WORKLOADS["text-b8x128"]
    b, n, h, i, layers = 8, 128, 768, 3072, 12
    per_layer = 2 * (4 * h * h + 2 * h * i) * b * n + 4 * b * n * n * h
    assert bench.workload_gflop(workload, "base") * 1e9 == per_layer * layers + 2 * h * h * b  # about 180 GFLOP


def test_vision_flops_by_hand():
    """Patch embedding conv, 12 layers on 197 tokens, the classifier."""
    workload = bench.WORKLOADS["vision-cls-b8x224"]
    b, h, i, tokens = 8, 768, 3072, 14 * 14 + 1
    patch = 2 * b * 196 * h * 3 * 16 * 16
    per_layer = 2 * (4 * h * h + 2 * h * i) * b * tokens + 4 * b * tokens * tokens * h
    assert bench.workload_gflop(workload, "base") * 1e9 == patch + 12 * per_layer + 2 * b * h * 1000


@pytest.mark.parametrize("name", list(bench.WORKLOADS))
def test_workload_flops_match_the_flop_counter_with_every_kernel_visible(name, monkeypatch):
    """With d2v's oneDNN linears off, ``torch.utils.flop_counter`` sees every matmul and conv
    (attention through its explicit-matmul path): it agrees with the analytic count exactly."""
    from torch.utils.flop_counter import FlopCounterMode

    monkeypatch.setattr(layers, "ONEDNN_LINEAR", False)
    workload = bench.WORKLOADS[name]
    config = workload.config("tiny")
    model = d2v_torch.model_class(workload.architecture)(config).eval()
    inputs = {k: torch.from_numpy(v) for k, v in workload.inputs(config, "tiny").items()}
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        model(**inputs, output_attentions=True)
    assert bench.workload_gflop(workload, "tiny") * 1e9 == counter.get_total_flops()


@pytest.mark.slow
def test_data2vec2_int8_rows_next_to_fp32():
    """The data2vec 2.0 audio workload gets its onnxruntime fp32 and int8 rows (the ONNX trace
    takes the default audio length), computing what d2v torch computes."""
    result = bench.run_workload(bench.WORKLOADS["audio2-ctc-b2x10s"], "tiny", ["torch-fp32", "ort-fp32", "ort-int8"],
                                repeats=1, warmup=1)
    rows = result["rows"]
    assert not result["skipped"] and set(rows) == {"torch-fp32", "ort-fp32", "ort-int8"}
    assert rows["ort-fp32"]["rel_err"] <= 1e-5 and 0 < rows["ort-int8"]["rel_err_vs_fp32"] <= 0.1


def test_adapters_report_covers_every_family():
    """``crosscheck.adapters_report`` (docs/training.md's int8 and LoRA table) has a workload for
    each of the six families; data2vec 2.0 text, which has no bench workload, measures too."""
    from crosscheck import adapters_report

    workloads = [adapters_report.REPORT_WORKLOADS[name] for name in adapters_report.FAMILY_WORKLOADS.values()]
    assert sorted(w.family for w in workloads) == sorted(adapters_report.FAMILY_WORKLOADS)
    row = adapters_report.measure("text2-cls-b8x128", "tiny")
    assert row["family"] == "text2" and 0 < row["lora_share"] < 0.2 and 0 < row["int8_rel_err"] < 0.1


def test_bench_cli_rejects_unknown_names():
    with pytest.raises(SystemExit):
        bench.main(["--workloads", "nope", "--no-load"])


@pytest.mark.slow
def test_load_measurement_in_a_fresh_process():
    result = bench.measure_loading("tiny", runs=1, threads=1, loaders=["d2v torch"])
    entry = result["d2v torch"]
    assert "error" not in entry, entry
    assert entry["seconds"] > 0 and entry["peak_extra_mb"] >= 0 and entry["format"] == "safetensors"


def test_load_rows_compare_keras_with_torch_and_peak_memory_with_the_weights():
    row = dict(format="safetensors", checkpoint_mb=100.0, seconds_max=1.0, rss_x_checkpoint=1.0)
    loading = {
        "d2v torch": dict(row, seconds=0.2, seconds_min=0.1, peak_extra_mb=100.0, peak_extra_mb_after_use=100.0),
        "d2v keras": dict(row, seconds=0.3, seconds_min=0.25, peak_extra_mb=110.0, peak_extra_mb_after_use=110.0),
        "d2v keras (h5)": dict(row, format="tf-h5", seconds=0.5, seconds_min=0.3, peak_extra_mb=140.0,
                               peak_extra_mb_after_use=140.0),
    }
    bench.compare_loaders(loading, 100 * 2**20)
    h5 = loading["d2v keras (h5)"]
    assert h5["rss_x_weights"] == pytest.approx(1.4) and h5["vs_d2v_torch"] == pytest.approx(2.5)
    assert h5["vs_d2v_torch_min"] == pytest.approx(3.0) and "vs_d2v_torch" not in loading["d2v torch"]
    targets = {t["target"]: t for t in bench.targets([], loading)}
    time_row = targets["d2v keras from_pretrained time / d2v torch's (same folder, same run)"]
    assert time_row["measured"] == pytest.approx(1.5) and time_row["met"] is True
    memory_row = targets["d2v keras from_pretrained (h5) peak RSS / weight bytes"]
    assert memory_row["measured"] == pytest.approx(1.4) and memory_row["met"] is False
    report = {"threads": 1, "repeats": 1, "warmup": 1, "size": "tiny", "workloads": [], "loading": loading,
              "targets": list(targets.values())}
    assert "d2v keras (h5): peak 1.40x the weights (100 MB), time 2.50x d2v torch's" in bench.format_report(report)
    # the weight bytes are those of the checkpoint the load rows write
    workload = bench.WORKLOADS["vision-cls-b8x224"]
    arrays = weight_spec(workload.config("tiny"), workload.architecture).random_arrays(0)
    assert bench.weight_bytes("tiny") == sum(a.nbytes for a in arrays.values())


# ------------------------------------------------------------------------- fast paths


@pytest.fixture
def onednn_everywhere(monkeypatch):
    """Route even tiny float32 inference matmuls through oneDNN (on Intel CPUs too)."""
    monkeypatch.setattr(layers, "ONEDNN_MIN_MACS", 0)
    monkeypatch.setattr(layers, "_ONEDNN_FLOAT32", True)
    calls = []
    op = layers._ONEDNN_LINEAR_OP
    monkeypatch.setattr(layers, "_ONEDNN_LINEAR_OP", lambda *a: calls.append(1) or op(*a))
    return calls


@pytest.mark.parametrize("name", ["text-mlm-abs", "audio-ctc-adapter", "vision-seg-relbias"])
def test_onednn_linears_match_hf_and_keras(name, onednn_everywhere):
    case = next(c for c in all_cases("small") if c.name == name)
    row = check_case(case, seed=0, reference="hf", with_round_trips=False)
    assert row.ok, row.to_dict()
    assert onednn_everywhere  # the fast kernel really ran


def test_onednn_linear_steps_aside_for_training(onednn_everywhere):
    lin = layers.Linear(8, 5)
    x = torch.randn(3, 8)
    loss = lin(x).square().sum()
    loss.backward()  # oneDNN's kernel has no backward: F.linear ran
    assert not onednn_everywhere and lin.weight.grad is not None
    with torch.no_grad():
        y = lin(x)
    assert onednn_everywhere
    torch.testing.assert_close(y, F.linear(x, lin.weight, lin.bias), rtol=0, atol=1e-6)
    assert isinstance(lin, torch.nn.Linear) and set(lin.state_dict()) == {"weight", "bias"}


def test_float32_inference_stays_on_mkl_on_intel_cpus(onednn_everywhere, monkeypatch):
    """Where MKL is the faster float32 kernel (Intel CPUs) float32 inference keeps F.linear;
    bfloat16 still takes oneDNN (its weight laid out once)."""
    monkeypatch.setattr(layers, "_ONEDNN_FLOAT32", False)
    lin = layers.Linear(8, 5)
    with torch.no_grad():
        lin(torch.randn(3, 8))
    assert not onednn_everywhere
    with torch.no_grad():
        lin.bfloat16()(torch.randn(3, 8).bfloat16())
    assert bool(onednn_everywhere) == layers._ONEDNN_BF16


def test_cpu_vendor_is_read_from_cpuinfo(tmp_path, monkeypatch):
    """The vendor id that picks float32's kernel: /proc/cpuinfo's ``vendor_id`` line; without
    that file, what ``platform.processor()`` names (Windows), else unknown (oneDNN kept)."""
    info = tmp_path / "cpuinfo"
    for vendor in ("GenuineIntel", "AuthenticAMD"):
        info.write_text(f"processor\t: 0\nvendor_id\t: {vendor}\ncpu family\t: 6\n")
        assert layers._cpu_vendor(str(info)) == vendor
    monkeypatch.setattr(layers.platform, "processor", lambda: "Intel64 Family 6 Model 85 Stepping 7, GenuineIntel")
    assert layers._cpu_vendor(str(tmp_path / "absent")) == "GenuineIntel"
    monkeypatch.setattr(layers.platform, "processor", lambda: "arm")
    assert layers._cpu_vendor(str(tmp_path / "absent")) == ""
    assert layers._ONEDNN_FLOAT32 == (layers._cpu_vendor() != "GenuineIntel")


def test_bf16_packed_weight_follows_weight_changes(onednn_everywhere):
    import copy

    lin = layers.Linear(16, 8).bfloat16()
    x = torch.randn(4, 16).bfloat16()

    def check():
        with torch.no_grad():
            torch.testing.assert_close(lin(x), F.linear(x, lin.weight, lin.bias), rtol=0, atol=0)

    check()
    # CPUs without oneDNN bfloat16 support keep F.linear (and no cache)
    assert ("_onednn_packed" in lin.__dict__) == bool(onednn_everywhere) == layers._ONEDNN_BF16
    with torch.no_grad():
        lin.weight.mul_(-2)  # an in-place update (what optimizers and EMA updates do)
    check()
    lin.load_state_dict({"weight": torch.randn(8, 16), "bias": torch.randn(8)})
    check()
    lin.float()
    lin.weight.data.normal_()  # changes made in float32 ...
    lin.bfloat16()  # ... reach the new bfloat16 weight even if it reuses the old address
    check()
    assert "_onednn_packed" not in copy.deepcopy(lin).__dict__  # a cache, never copied or pickled


@pytest.mark.parametrize("bias_shape", [None, (1, 3, 7, 7), (2, 1, 1, 7)])
def test_matmul_attention_equals_fused_kernel(bias_shape):
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 3, 7, 4, generator=g) for _ in range(3))
    bias = None if bias_shape is None else torch.randn(*bias_shape, generator=g)
    expected = F.scaled_dot_product_attention(q, k, v, attn_mask=bias, scale=0.3)
    expected = expected.transpose(1, 2).reshape(2, 7, 12)
    got = layers._matmul_attention(q, k, v, bias, 0.0, 0.3)
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-6)
    # bfloat16 on CPU takes the matmul path inside attention(); close to float32
    low, _ = layers.attention(q.bfloat16(), k.bfloat16(), v.bfloat16(), None if bias is None else bias.bfloat16(),
                              scale=0.3)
    assert layers._matmul_attention_is_faster(q.bfloat16(), k.bfloat16())
    assert float((low.float() - expected).abs().max()) < 3e-2


def test_bf16_models_stay_close_to_float32():
    for name in ("text-model-abs", "audio-model-plain", "vision-model-relbias"):
        case = next(c for c in all_cases("small") if c.name == name)
        arrays = weight_spec(case.config, case.architecture).random_arrays(0)
        inputs = case.make_inputs(np.random.default_rng(1))
        model = getattr(d2v_torch, case.architecture)(case.config)
        model.load_arrays(arrays)
        ref = run_torch(case, arrays, inputs, model.eval())["last_hidden_state"]
        low = {k: torch.from_numpy(v).bfloat16() if v.dtype.kind == "f" else torch.from_numpy(v)
               for k, v in inputs.items()}
        with torch.no_grad():
            out = model.to(torch.bfloat16)(**low).last_hidden_state.float().numpy()
        assert np.abs(out - ref).max() <= 3e-2 * np.abs(ref).max(), name


def test_keras_make_fast_equals_the_eager_call():
    case = next(c for c in all_cases("small") if c.name == "text-causal-dec")
    arrays = weight_spec(case.config, case.architecture).random_arrays(0)
    inputs = {k: v for k, v in case.make_inputs(np.random.default_rng(1)).items()}
    model = d2v_tf.TFData2VecTextForCausalLM(case.config)
    model.load_arrays(arrays)
    eager = model(**inputs, output_hidden_states=True, use_cache=False)
    for jit in (True, False):
        fast = model.make_fast(jit_compile=jit)
        out = fast(**inputs, output_hidden_states=True, use_cache=False)
        assert type(out) is type(eager) and list(out) == list(eager)
        diffs = max_abs_diff({k: np.asarray(v) if not isinstance(v, tuple) else [np.asarray(x) for x in v]
                              for k, v in out.items()},
                             {k: np.asarray(v) if not isinstance(v, tuple) else [np.asarray(x) for x in v]
                              for k, v in eager.items()})
        assert max(diffs.values()) <= 1e-5, diffs
        assert isinstance(fast(inputs["input_ids"], return_dict=False), tuple)
    with pytest.raises(TypeError, match="inference only"):
        fast(**inputs, training=True)
