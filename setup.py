import re

from setuptools import find_packages, setup

with open("atomic_config/version.py", encoding="utf-8") as _f:  # the one place the version is written
    VERSION = re.search(r'^VERSION = "([^"]+)"$', _f.read(), re.M).group(1)

setup(
    name="gateway-engine",
    version=VERSION,
    description="Gateway Engine: OTA app hosting, durable message queue and telemetry for Linux IoT gateways",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    python_requires=">=3.9",
    packages=find_packages(include=["atomic_config*", "device_api*", "device_client*", "gmq*", "otau*", "gwe*",
                                    "murano_local*", "GatewayEngine*", "exo*"]),
    package_data={"gwe": ["sample_app/*"], "murano_local.ui": ["static/*"]},
    install_requires=[
        "supervisor>=4.2",
        "requests>=2.25",
        "urllib3>=2,<3",  # device_client meters connections through urllib3 2.x internals (checked at import)
        "paho-mqtt>=2.0,<3",
        "psutil>=5.8",
        "click>=8.0",
        "pyyaml>=5.4",
        "cryptography>=3.4",
    ],
    extras_require={
        "test": ["pytest>=7", "pytest-timeout>=2", "pytest-xdist>=3.5", "murano-client==21.12.22",
                 "h11==0.16.0",  # the oracle the HTTP parsers are tested against
                 "amqtt==0.12.1; python_version >= '3.10'",
                 "ruff==0.17.6",  # pinned: a newer ruff may add findings to the selected rules
                 "wheel",  # scripts/release and scripts/install-gateway build wheels offline in the tests
                 "mfusepy==3.1.1",  # the reliability lab's power-loss filesystem (tests/powerloss_fs.py)
                 "hypothesis>=6.100",  # the reliability lab's fuzz tests
                 "selenium==4.50.0"],  # the dashboard page in headless Chromium (Debian's chromium-driver)
        "mqtt-server": ["amqtt==0.12.1; python_version >= '3.10'"],  # murano-local serve --mqtt-port
    },
    entry_points={"console_scripts": [
        "murano-local = murano_local.cli:main",
        "gdc = device_client.cli:main",
        "gwe = gwe.cli:main",
        "gmq = gmq.cli:main",
    ]},
)
