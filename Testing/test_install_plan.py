"""torch the way the Slicer PyTorch extension installs it (the CUDA wheel index for the NVIDIA
driver, read from nvidia-smi), and GPU choice on the worker side (cuda:N, the CUDA device list),
with fakes for nvidia-smi and torch.cuda."""

import subprocess
import sys
import types

import pytest

from pantheon.slicerbridge import install, panel
from pantheon.slicerbridge.install import (
    TORCH_CPU_INDEX,
    TORCH_CUDA_INDEX,
    cuda_advice,
    detect_nvidia_driver,
    install_plan,
    torch_index_for_driver,
)
from pantheon.worker import requirements as reqs

SMI_TWO_GPUS = "550.54.14\n550.54.14\n"


class FakeSmi:
    def __init__(self, code=0, out="", exc=None):
        self.code, self.out, self.exc, self.calls = code, out, exc, []

    def __call__(self, cmd):
        self.calls.append(cmd)
        if self.exc is not None:
            raise self.exc
        return self.code, self.out


# ------------------------------------------------------------------------------------ nvidia-smi
def test_detect_driver_from_nvidia_smi_output():
    smi = FakeSmi(out=SMI_TWO_GPUS)
    assert detect_nvidia_driver(smi) == "550.54.14"
    assert smi.calls[0][1:] == ["--query-gpu=driver_version", "--format=csv,noheader"]
    assert detect_nvidia_driver(FakeSmi(out="  576.02\r\n")) == "576.02"  # Windows line ends


@pytest.mark.parametrize("smi", [
    FakeSmi(exc=FileNotFoundError(2, "No such file or directory: 'nvidia-smi'")),  # no driver installed
    FakeSmi(code=9, out="NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA driver.\n"),
    FakeSmi(code=0, out="No devices were found\n"),
    FakeSmi(exc=subprocess.TimeoutExpired("nvidia-smi", 20)),
    FakeSmi(exc=PermissionError(13, "Permission denied")),
])
def test_no_usable_driver_is_none(smi):
    assert detect_nvidia_driver(smi) is None


def test_detect_runs_the_real_command_without_raising():
    # whatever this machine has, the answer is a version string or None, never an exception
    found = detect_nvidia_driver()
    assert found is None or reqs.version_tuple(found) >= (1,)


# ------------------------------------------------------------------------------------ driver -> index
@pytest.mark.parametrize("driver, platform, tag", [
    ("580.65.06", "linux", "cu130"),
    ("590.48.01", "linux", "cu130"),
    ("575.57.08", "linux", "cu128"),
    ("550.54.14", "linux", "cu128"),
    ("525.60.13", "linux", "cu128"),
    ("525.60.12", "linux", "cu118"),
    ("470.256.02", "linux", "cu118"),
    ("450.80.02", "linux", "cu118"),
    ("440.33", "linux", "cpu"),
    ("580.88", "win32", "cu130"),
    ("572.16", "win32", "cu128"),
    ("528.33", "win32", "cu128"),
    ("527.41", "win32", "cu118"),
    ("452.06", "win32", "cpu"),
    (None, "linux", "cpu"),
])
def test_torch_index_for_driver(driver, platform, tag):
    assert torch_index_for_driver(driver, platform) == "https://download.pytorch.org/whl/" + tag


def test_macos_uses_plain_pypi():
    assert torch_index_for_driver(None, "darwin") is None
    assert install_plan(["torch"], cuda=True, platform="darwin", driver_version="550.54.14").steps[0].pip_args == []
    assert install_plan(["torch"], cuda=False, platform="darwin").steps[0].pip_args == []


def test_table_is_newest_first_and_sane():
    rows = install.CUDA_WHEEL_DRIVERS
    for col in (1, 2):
        versions = [reqs.version_tuple(r[col]) for r in rows]
        assert versions == sorted(versions, reverse=True)
    assert [r[0] for r in rows] == sorted((r[0] for r in rows), key=lambda t: int(t[2:]), reverse=True)


# ------------------------------------------------------------------------------------ install plans
def test_cuda_plan_uses_the_index_for_the_driver():
    plan = install_plan(["torch", "monai"], python="/env/bin/python", cuda=True, platform="linux",
                        driver_version=detect_nvidia_driver(FakeSmi(out=SMI_TWO_GPUS)))
    assert plan.steps[0].pip_args == ["--index-url", "https://download.pytorch.org/whl/cu128"]
    assert plan.steps[0].pip_command("/env/bin/python") == [
        "/env/bin/python", "-m", "pip", "install", "torch>=2.1", "--index-url", "https://download.pytorch.org/whl/cu128"]
    assert plan.steps[1].requirements == ["monai>=1.3"] and plan.notes == []


def test_too_old_driver_installs_cpu_torch_and_says_so():
    plan = install_plan(["torch"], python="/env/bin/python", cuda=True, platform="linux", driver_version="418.39")
    assert plan.steps[0].pip_args == ["--index-url", TORCH_CPU_INDEX]
    assert "418.39 is too old" in plan.describe() and "450.80.02" in plan.describe()


def test_plans_without_a_driver_version_are_unchanged():
    assert install_plan(["torch"], platform="linux").steps[0].pip_args == ["--index-url", TORCH_CPU_INDEX]
    assert install_plan(["torch"], cuda=True, platform="linux").steps[0].pip_args == []  # PyPI Linux: CUDA build
    assert install_plan(["torch"], cuda=True, platform="win32").steps[0].pip_args == ["--index-url", TORCH_CUDA_INDEX]
    assert install_plan(["torch"], have_pytorch_extension=True).steps[0].via == "pytorchutils"
    # import names and distribution names both map to what pip installs
    assert install_plan(["sklearn", "PIL", "scikit-learn"]).requirements == ["scikit-learn>=1.3", "pillow>=10.0"]


def test_cuda_advice_before_falling_back_to_the_cpu():
    cpu_torch = {"torch": "2.13.0+cpu", "cuda": False,
                 "cuda_error": "This PyTorch (2.13.0+cpu) is a CPU-only build, so it cannot use an NVIDIA GPU."}
    text = cuda_advice(cpu_torch, "550.54.14", "linux")
    assert text.startswith("This machine has an NVIDIA GPU (driver 550.54.14) but jobs will run on the CPU: ")
    assert "CPU-only build" in text and text.endswith("Reinstall torch from https://download.pytorch.org/whl/cu128 "
                                                      "to use the GPU.")
    assert "Update the NVIDIA driver" in cuda_advice(cpu_torch, "418.39", "linux")
    assert cuda_advice(cpu_torch, None) is None  # no NVIDIA GPU: nothing to say
    assert cuda_advice(dict(cpu_torch, cuda=True), "550.54.14") is None
    assert cuda_advice({"torch": None, "cuda": None}, "550.54.14") is None  # the install plan handles it


def test_panel_reexports_the_install_api():
    for name in ("REQUIREMENT_SPECS", "TORCH_CPU_INDEX", "TORCH_CUDA_INDEX", "InstallPlan", "InstallStep",
                 "install_plan", "detect_nvidia_driver", "torch_index_for_driver"):
        assert getattr(panel, name) is getattr(install, name)


# ------------------------------------------------------------------------------------ torch.cuda fakes
def _props(name, mem, major=8, minor=6):
    return types.SimpleNamespace(name=name, total_memory=mem, major=major, minor=minor)


def fake_torch(cuda_build="12.8", devices=(), kernel_fails=(), init_error=None):
    torch = types.ModuleType("torch")
    torch.__version__ = "2.13.0" + ("" if cuda_build else "+cpu")
    torch.version = types.SimpleNamespace(cuda=cuda_build)

    def is_available():
        if init_error:
            raise RuntimeError(init_error)
        return bool(devices)

    class Ones:
        def __init__(self, device):
            self.device = device

        def __add__(self, other):
            if int(self.device.split(":")[1]) in kernel_fails:
                raise RuntimeError("CUDA error: no kernel image is available for execution on the device")
            return self

        def item(self):
            return 2.0
    torch.cuda = types.SimpleNamespace(is_available=is_available, device_count=lambda: len(devices),
                                       get_device_properties=lambda i: devices[i])
    torch.ones = lambda n, device: Ones(device)
    return torch


def test_torch_report_lists_the_gpus(monkeypatch):
    monkeypatch.setitem(sys.modules, "torch", fake_torch(devices=[_props("NVIDIA RTX A6000", 48 << 30),
                                                                  _props("NVIDIA GeForce RTX 5090", 32 << 30, 12, 0)],
                                                         kernel_fails={1}))
    rep = reqs.torch_report(check_kernels=True)
    assert rep["torch_cuda"] == "12.8" and rep["cuda"] is True
    assert [(d["device"], d["name"], d["memory_bytes"], d["capability"], d["usable"]) for d in rep["cuda_devices"]] == [
        ("cuda:0", "NVIDIA RTX A6000", 48 << 30, "8.6", True),
        ("cuda:1", "NVIDIA GeForce RTX 5090", 32 << 30, "12.0", False)]
    assert "cuda:1" in rep["cuda_error"] and "no kernel image" in rep["cuda_error"]
    assert reqs.device_choices(rep) == ["auto", "cpu", "cuda:0"]
    assert reqs.torch_report(check_kernels=False)["cuda_devices"][1]["usable"] is True  # not tried: unknown


@pytest.mark.parametrize("torch, why", [
    (fake_torch(cuda_build=None), "CPU-only build"),
    (fake_torch(devices=()), "finds no usable NVIDIA GPU"),
    (fake_torch(devices=(_props("x", 1),), init_error="CUDA driver initialization failed"), "cannot initialise CUDA"),
])
def test_torch_report_says_why_cuda_is_not_usable(monkeypatch, torch, why):
    monkeypatch.setitem(sys.modules, "torch", torch)
    rep = reqs.torch_report(check_kernels=True)
    assert rep["cuda"] is False and rep["cuda_devices"] == [] and why in rep["cuda_error"]
    assert rep["cuda_error"].endswith(".") and "\n" not in rep["cuda_error"]


# ------------------------------------------------------------------------------------ pick_device
@pytest.fixture
def two_gpus(monkeypatch):
    import torch
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    return torch


def test_pick_device_accepts_each_gpu(two_gpus):
    from pantheon.runtime import pick_device
    torch = two_gpus
    assert pick_device("cuda:0") == torch.device("cuda", 0)
    assert pick_device("cuda:1") == torch.device("cuda", 1)
    assert pick_device(" CUDA:1 ") == torch.device("cuda", 1)
    assert pick_device("cuda") == torch.device("cuda")
    assert pick_device("auto").type == "cuda" and pick_device("cpu").type == "cpu"


def test_pick_device_names_a_missing_gpu_in_one_sentence(two_gpus):
    from pantheon.errors import PantheonError
    from pantheon.runtime import pick_device
    with pytest.raises(PantheonError) as e:
        pick_device("cuda:2")
    assert str(e.value) == "GPU cuda:2 does not exist: PyTorch sees 2 CUDA devices here (cuda:0 to cuda:1)."
    with pytest.raises(PantheonError, match=r"Unknown device 'gpu1': use auto, cpu, cuda or cuda:N"):
        pick_device("gpu1")
    with pytest.raises(PantheonError, match="Unknown device"):
        pick_device("cuda:-1")


def test_pick_device_without_cuda_says_why(monkeypatch):
    import torch

    from pantheon.errors import PantheonError
    from pantheon.runtime import pick_device
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.version, "cuda", None)
    assert pick_device("auto").type == "cpu"
    with pytest.raises(PantheonError) as e:
        pick_device("cuda:1")
    msg = str(e.value)
    assert msg.startswith("GPU cuda:1 was requested but this PyTorch") and "CPU-only build" in msg
    assert msg.endswith("; use cpu instead.") and msg.count(".") <= 4  # one sentence (version dots aside)


def test_worker_job_with_a_missing_gpu_fails_with_that_sentence(two_gpus):
    """Through a worker task, the sentence reaches the client as an input error, no traceback."""
    from pantheon.models.neonet.tasks import _device
    from pantheon.worker.server import JobContext, LRUCache

    class Server:
        cache = LRUCache(1 << 20)

        def send(self, msg):
            pass
    from pantheon.errors import PantheonError
    from pantheon.worker.protocol import error_kind_for
    ctx = JobContext(Server(), "j", "pni.predict", {"device": "cuda:5"}, {}, "/tmp/x")
    with pytest.raises(PantheonError) as e:
        _device(ctx)
    assert error_kind_for(e.value) == "input" and "cuda:5 does not exist" in str(e.value)
    ctx.params["device"] = "cuda:1"
    assert _device(ctx) == "cuda:1"
