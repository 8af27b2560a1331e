"""characters, personas and the prompt library

Revision ID: 0011
Revises: 0010

"""
from typing import Sequence, Union

import sqlalchemy as sa
from alembic import op

revision: str = '0011'
down_revision: Union[str, Sequence[str], None] = '0010'
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


def upgrade() -> None:
    op.create_table('characters',
    sa.Column('id', sa.String(length=32), nullable=False),
    sa.Column('owner', sa.String(length=128), nullable=False),
    sa.Column('name', sa.String(length=200), nullable=False),
    sa.Column('description', sa.Text(), nullable=False),
    sa.Column('personality', sa.Text(), nullable=False),
    sa.Column('scenario', sa.Text(), nullable=False),
    sa.Column('first_message', sa.Text(), nullable=False),
    sa.Column('alternate_greetings', sa.JSON(), nullable=False),
    sa.Column('example_dialogue', sa.Text(), nullable=False),
    sa.Column('system_prompt', sa.Text(), nullable=False),
    sa.Column('post_history_instructions', sa.Text(), nullable=False),
    sa.Column('creator_notes', sa.Text(), nullable=False),
    sa.Column('creator', sa.String(length=200), nullable=False),
    sa.Column('character_version', sa.String(length=200), nullable=False),
    sa.Column('tags', sa.JSON(), nullable=False),
    sa.Column('card_extra', sa.JSON(), nullable=False),
    sa.Column('avatar', sa.LargeBinary(), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('characters', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_characters_owner'), ['owner'], unique=False)
        batch_op.create_index('ix_characters_owner_name', ['owner', 'name'], unique=False)

    op.create_table('personas',
    sa.Column('id', sa.String(length=32), nullable=False),
    sa.Column('owner', sa.String(length=128), nullable=False),
    sa.Column('name', sa.String(length=200), nullable=False),
    sa.Column('description', sa.Text(), nullable=False),
    sa.Column('is_default', sa.Boolean(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('personas', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_personas_owner'), ['owner'], unique=False)

    op.create_table('saved_prompts',
    sa.Column('id', sa.String(length=32), nullable=False),
    sa.Column('owner', sa.String(length=128), nullable=False),
    sa.Column('name', sa.String(length=200), nullable=False),
    sa.Column('text', sa.Text(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('saved_prompts', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_saved_prompts_owner'), ['owner'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('saved_prompts', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_saved_prompts_owner'))
    op.drop_table('saved_prompts')
    with op.batch_alter_table('personas', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_personas_owner'))
    op.drop_table('personas')
    with op.batch_alter_table('characters', schema=None) as batch_op:
        batch_op.drop_index('ix_characters_owner_name')
        batch_op.drop_index(batch_op.f('ix_characters_owner'))
    op.drop_table('characters')
