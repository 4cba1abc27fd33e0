"""The cloud half: a token registry that keeps every gateway's signed list true.

``model`` checks input; ``store`` keeps users, phones, gateways and shares (SQLite
or PostgreSQL) and computes each gateway's list (``lists``) in one transaction
per call; ``registry`` is the operations; ``mqtt`` publishes lists and reads what
gateways send; ``http`` is the API; ``serve`` wires them; ``cli`` is the command.
"""
