"""The package's two configuration files, made from the checkout's at build time.

``gateway IN``: ``didgw config example`` with the keys an installed gateway needs set (the
broker's password file and token directory, where its TLS files go). ``mosquitto IN DYNSEC
PLUGIN``: configs/mosquitto/mosquitto.conf with the dynamic-security plugin of the package's
architecture and the installed didgw plugin. Each edit must find the line it changes: a
source file that moved on fails the build instead of shipping a default.
"""

import re
import sys

#: (table, key, value) set in the installed /etc/didgw/gateway.toml.
GATEWAY = [
    ("mqtt", "password_file", '"/etc/didgw/broker.password"'),
    ("mqtt", "token_dir", '"/var/lib/didgw-broker"'),
    ("tls", "broker_dir", '"/etc/mosquitto/certs/didgw"'),
    ("tls", "broker_owner", '"mosquitto"'),
    ("tls", "broker_pid_file", '"/run/mosquitto/mosquitto.pid"'),
]

HEADER = (
    "# Installed by the didgw package (a conffile: your changes are kept on upgrade).\n"
    "# The broker's accounts and this file's [mqtt] password_file: `sudo didgw broker setup`.\n"
)


def gateway(text: str) -> str:
    lines = text.splitlines(keepends=True)
    for table, key, value in GATEWAY:
        start = lines.index(f"[{table}]\n")
        for i in range(start + 1, len(lines)):
            if lines[i].startswith("["):
                sys.exit(f"edit_conf: no '# {key} = ' in [{table}]")
            if lines[i].startswith(f"# {key} = "):
                lines[i] = f"{key} = {value}\n"
                break
        else:
            sys.exit(f"edit_conf: no '# {key} = ' in [{table}]")
    return HEADER + "".join(lines)


def mosquitto(text: str, dynsec: str, plugin: str) -> str:
    text, n = re.subn(r"(?m)^plugin \S*/didgw_auth\.so$", f"plugin {plugin}", text)
    if n != 1:
        sys.exit(f"edit_conf: {n} didgw plugin lines, expected 1")
    pattern = r"(?m)^#?plugin /usr/lib/[^/\s]+/mosquitto_dynamic_security\.so\n"
    first = re.search(pattern, text)
    if first is None:
        sys.exit("edit_conf: no dynamic-security plugin line")
    # The first of the commented alternatives becomes this architecture's; the rest go.
    rest = re.sub(pattern, "", text[first.end() :])
    text = text[: first.start()] + "@DYNSEC@" + rest
    return HEADER + text.replace("@DYNSEC@", f"plugin {dynsec}\n", 1)


def main() -> None:
    kind, path, *rest = sys.argv[1:]
    with open(path, encoding="utf-8") as f:
        text = f.read()
    out = gateway(text) if kind == "gateway" else mosquitto(text, *rest)
    sys.stdout.write(out)


if __name__ == "__main__":
    main()
