"""Create the feedback_events table.

Revision ID: 0001
Revises:
"""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "feedback_events",
        # SQLite only autoincrements an INTEGER PRIMARY KEY (a BIGINT one would stay NULL).
        sa.Column("seq", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), primary_key=True, autoincrement=True),
        sa.Column("event_id", sa.String(160), nullable=False),
        sa.Column("user_id", sa.String(256), nullable=False),
        sa.Column("item_id", sa.String(256), nullable=False),
        sa.Column("type", sa.String(16), nullable=False),
        sa.Column("value", sa.Float(), nullable=True),
        sa.Column("timestamp", sa.Float(), nullable=False),
        sa.Column("received_at", sa.Float(), nullable=False),
        sa.UniqueConstraint("event_id", name="uq_feedback_events_event_id"),
        # AUTOINCREMENT: seq values are never reused, so seq stays a safe tie-breaker and cursor.
        sqlite_autoincrement=True,
    )
    # (user_id, timestamp) also serves lookups by user_id alone: no separate user_id index to maintain.
    op.create_index("ix_feedback_events_user_id_timestamp", "feedback_events", ["user_id", "timestamp"])
    op.create_index("ix_feedback_events_timestamp", "feedback_events", ["timestamp"])


def downgrade() -> None:
    op.drop_table("feedback_events")
