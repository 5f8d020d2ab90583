from setuptools import find_packages, setup

setup(
    name="cit_fast",
    version="0.1.0",
    description="Distributed causal interventional training (CIT) for image recognition",
    python_requires=">=3.10",
    packages=find_packages(include=["cit_fast", "cit_fast.*"]) + ["cit_fast.kernels"],
    # The design card keeps kernels/ at the top level; it installs as cit_fast.kernels because PyPI
    # already has an unrelated, popular top-level package named `kernels`.
    package_dir={"cit_fast.kernels": "kernels"},
    package_data={"cit_fast": ["configs/*.yaml", "data/presets/*.yaml"]},
    install_requires=[
        "torch==2.14.1",
        "torchvision==0.29.1",
        "numpy",
        "pillow",
        "pyyaml",
        "tqdm",
        "prometheus-client",
    ],
    extras_require={
        "dali": ["nvidia-dali-cuda130"],
        "deepspeed": ["deepspeed"],
        "masks": ["opencv-contrib-python-headless", "threadpoolctl"],  # threadpoolctl: one BLAS thread per mask worker
        "coco": ["pycocotools"],
        "report": ["matplotlib", "scikit-learn"],
        "export": ["safetensors", "onnx", "onnxruntime"],  # cit-fast export --format safetensors / onnx
        "etcd": ["python-etcd"],  # launchers/torchrun.sh RDZV_BACKEND=etcd-v2
        "dev": ["pytest", "pytest-timeout", "pytest-xdist", "hypothesis", "scipy", "scikit-image",  # skimage: mask tests on photos
                "safetensors", "onnx", "onnxruntime",  # the export tests read every format back
                "python-etcd"],  # torch elastic's etcd-v2 rendezvous (launchers/torchrun.sh RDZV_BACKEND=etcd-v2)
    },
    entry_points={"console_scripts": ["cit-fast=cit_fast.cli:main"]},
)
