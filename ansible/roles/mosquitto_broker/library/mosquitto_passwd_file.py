#!/usr/bin/python
# Copyright: voice-agent maintainers
# MIT License (see LICENSE)
"""Ansible module: a Mosquitto password file that changes only when its credentials do."""

from __future__ import annotations

DOCUMENTATION = r"""
---
module: mosquitto_passwd_file
short_description: Manage a Mosquitto password file idempotently
description:
  - Writes a Mosquitto password file holding exactly the given users, with passwords hashed as
    C(mosquitto_passwd) 2.x hashes them (C($7$), PBKDF2-HMAC-SHA512, random salt).
  - Salted hashes differ on every run, so the existing file is not compared as text; instead every
    wanted password is verified against the stored hash. The file is rewritten only when a user
    was added or removed or a password no longer verifies.
  - Passwords never appear on a command line (C(mosquitto_passwd -b) shows them in C(ps)) and are
    never written to disk in plain text.
options:
  path:
    description: The password file.
    type: path
    required: true
  users:
    description: Every user the file should hold.
    type: list
    elements: dict
    required: true
    suboptions:
      username:
        description: User name (no colon, no line break).
        type: str
        required: true
      password:
        description: Plain-text password (no line break).
        type: str
        required: true
        no_log: true
  iterations:
    description: PBKDF2 iterations for newly written hashes (C(mosquitto_passwd) uses 101).
    type: int
    default: 101
extends_documentation_fragment:
  - ansible.builtin.files
author:
  - voice-agent maintainers
"""

EXAMPLES = r"""
- name: Broker credentials
  mosquitto_passwd_file:
    path: /etc/mosquitto/voice-agent.passwd
    users:
      - {username: pi-kitchen, password: "{{ vault_pi_kitchen_password }}"}
    owner: mosquitto
    group: mosquitto
    mode: "0600"
  no_log: true
"""

RETURN = r"""
users:
  description: The user names in the file, sorted.
  returned: always
  type: list
  elements: str
rewritten:
  description: Whether the file's contents were (or, in check mode, would be) replaced.
  returned: always
  type: bool
"""

import base64
import hashlib
import hmac
import os
import tempfile

from ansible.module_utils.basic import AnsibleModule

SALT_BYTES = 12


def hash_password(password: str, iterations: int) -> str:
    salt = os.urandom(SALT_BYTES)
    digest = hashlib.pbkdf2_hmac("sha512", password.encode("utf-8"), salt, iterations)
    return "$7${}${}${}".format(iterations, base64.b64encode(salt).decode(), base64.b64encode(digest).decode())


def verifies(password: str, stored: str) -> bool:
    """Whether `password` matches a stored $7$ (PBKDF2-SHA512) or $6$ (salted SHA512) hash."""
    parts = stored.split("$")
    try:
        if len(parts) == 5 and parts[1] == "7":
            iterations, salt, digest = int(parts[2]), base64.b64decode(parts[3]), base64.b64decode(parts[4])
            candidate = hashlib.pbkdf2_hmac("sha512", password.encode("utf-8"), salt, iterations)
        elif len(parts) == 4 and parts[1] == "6":
            salt, digest = base64.b64decode(parts[2]), base64.b64decode(parts[3])
            candidate = hashlib.sha512(password.encode("utf-8") + salt).digest()
        else:
            return False
    except (ValueError, TypeError):
        return False
    return hmac.compare_digest(candidate, digest)


def read_entries(path: str) -> dict[str, str] | None:
    if not os.path.exists(path):
        return None
    entries = {}
    with open(path, encoding="utf-8") as handle:
        for line in handle:
            line = line.rstrip("\n")
            if line and ":" in line:
                user, stored = line.split(":", 1)
                entries[user] = stored
    return entries


def main() -> None:
    module = AnsibleModule(
        argument_spec=dict(
            path=dict(type="path", required=True),
            users=dict(
                type="list",
                elements="dict",
                required=True,
                options=dict(
                    username=dict(type="str", required=True),
                    password=dict(type="str", required=True, no_log=True),
                ),
            ),
            iterations=dict(type="int", default=101),
        ),
        add_file_common_args=True,
        supports_check_mode=True,
    )
    path = module.params["path"]
    wanted = {}
    for user in module.params["users"]:
        name, password = user["username"], user["password"]
        if not name or ":" in name or "\n" in name or "\n" in password:
            module.fail_json(msg="user name %r: must be non-empty without ':' or line breaks; "
                                 "passwords without line breaks" % name)
        if name in wanted:
            module.fail_json(msg="user %r is listed twice" % name)
        wanted[name] = password

    existing = read_entries(path)
    rewrite = (
        existing is None
        or set(existing) != set(wanted)
        or not all(verifies(wanted[name], existing[name]) for name in wanted)
    )
    changed = rewrite
    if rewrite and not module.check_mode:
        content = "".join(
            "{}:{}\n".format(name, hash_password(wanted[name], module.params["iterations"]))
            for name in sorted(wanted)
        )
        directory = os.path.dirname(os.path.abspath(path))
        fd, tmp = tempfile.mkstemp(prefix=".passwd-", dir=directory)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                handle.write(content)
            os.chmod(tmp, 0o600)
            module.atomic_move(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)

    file_args = module.load_file_common_arguments(module.params)
    file_args["path"] = path
    if existing is None and module.check_mode:
        pass  # nothing to compare attributes with yet
    else:
        changed = module.set_fs_attributes_if_different(file_args, changed)
    module.exit_json(changed=changed, rewritten=rewrite, users=sorted(wanted), path=path)


if __name__ == "__main__":
    main()
