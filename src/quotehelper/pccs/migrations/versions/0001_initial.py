"""The initial PCCS schema.

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
        "collateral",
        sa.Column("key", sa.String(200), primary_key=True),
        sa.Column("kind", sa.String(32), nullable=False),
        sa.Column("tee", sa.String(3)),
        sa.Column("version", sa.Integer),
        sa.Column("subject", sa.String(64)),
        sa.Column("update_type", sa.String(8)),
        sa.Column("evaluation_number", sa.Integer),
        sa.Column("body", sa.LargeBinary, nullable=False),
        sa.Column("chain", sa.Text),
        sa.Column("url", sa.Text),
        sa.Column("fetched_at", sa.Float, nullable=False),
        sa.Column("not_after", sa.Float, nullable=False),
    )
    op.create_table(
        "platforms",
        sa.Column("qe_id", sa.String(260), primary_key=True),
        sa.Column("pce_id", sa.String(4), primary_key=True),
        sa.Column("enc_ppid", sa.Text),
        sa.Column("platform_manifest", sa.Text),
        sa.Column("cpu_svn", sa.String(32)),
        sa.Column("pce_svn", sa.String(4)),
        sa.Column("fmspc", sa.String(12)),
        sa.Column("ca", sa.String(10)),
        sa.Column("updated_at", sa.Float),
    )
    op.create_table(
        "pck_certs",
        sa.Column("qe_id", sa.String(260), primary_key=True),
        sa.Column("pce_id", sa.String(4), primary_key=True),
        sa.Column("tcbm", sa.String(36), primary_key=True),
        sa.Column("cert", sa.Text, nullable=False),
    )
    op.create_table(
        "pck_chains",
        sa.Column("ca", sa.String(10), primary_key=True),
        sa.Column("chain", sa.Text, nullable=False),
    )
    op.create_table(
        "platform_tcbs",
        sa.Column("qe_id", sa.String(260), primary_key=True),
        sa.Column("pce_id", sa.String(4), primary_key=True),
        sa.Column("cpu_svn", sa.String(32), primary_key=True),
        sa.Column("pce_svn", sa.String(4), primary_key=True),
        sa.Column("tcbm", sa.String(36), nullable=False),
    )
    op.create_table(
        "registrations",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("qe_id", sa.String(260), nullable=False),
        sa.Column("pce_id", sa.String(4), nullable=False),
        sa.Column("cpu_svn", sa.String(32)),
        sa.Column("pce_svn", sa.String(4)),
        sa.Column("enc_ppid", sa.Text),
        sa.Column("platform_manifest", sa.Text),
        sa.Column("state", sa.Integer, nullable=False),
        sa.Column("created_at", sa.Float, nullable=False),
    )
    op.create_index("collateral_kind", "collateral", ["kind", "not_after"])


def downgrade() -> None:
    for t in ("registrations", "platform_tcbs", "pck_chains", "pck_certs", "platforms", "collateral"):
        op.drop_table(t)
