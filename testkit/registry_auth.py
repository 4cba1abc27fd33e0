"""A maker's own user authentication, as docs/cloud.md shows it, for the registry's tests.

``http.auth_hook: testkit.registry_auth:authenticate``: the bearer is a session id,
looked up in the JSON file ``$EDGEBELL_TEST_SESSIONS`` names (``{"session": "user"}``).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from edgebell.registry.auth import AuthRequest, Principal


def authenticate(request: AuthRequest) -> Principal | None:
    sessions = json.loads(Path(os.environ["EDGEBELL_TEST_SESSIONS"]).read_text())
    user = sessions.get(request.bearer or "")
    return None if user is None else Principal(f"session of {user}", user)
