"""The SQL surface: transactional publish (outbox), operator views and repair functions,
node maintenance mode, and the schema-compatibility table of rolling upgrades.

Expand only: new tables, one new column with a default (``nodes.draining``), functions
and views. Nodes of the previous release never read them, so they keep running on
this schema (``oldest_node = "0006"``).

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-02 07:40:00

"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import context, op

revision: str = "0007"
down_revision: str | Sequence[str] | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Rolling upgrades (see cavalcade/storage/window.py): the oldest code revision that can
# keep running on this schema, and which phase of expand/migrate/contract this is.
oldest_node: str = "0006"
phase: str = "expand"


def _is_cockroach() -> bool:
    if context.is_offline_mode():
        return False
    version = op.get_bind().execute(sa.text("SELECT version()")).scalar_one()
    return "CockroachDB" in str(version)


def _schema() -> str:
    if context.is_offline_mode():
        return "public"
    return str(op.get_bind().execute(sa.text("SELECT current_schema()")).scalar_one())


def upgrade() -> None:
    op.add_column(
        "nodes",
        sa.Column("draining", sa.Boolean(), server_default=sa.text("false"), nullable=False),
    )
    op.create_table(
        "outbox",
        sa.Column("id", sa.BigInteger(), sa.Identity(always=False), nullable=False),
        sa.Column("vhost_id", sa.Integer(), nullable=False),
        sa.Column("exchange", sa.String(length=255), nullable=False),
        sa.Column("routing_key", sa.String(length=255), nullable=False),
        sa.Column(
            "properties",
            sa.dialects.postgresql.JSONB(),
            server_default=sa.text("'{}'"),
            nullable=False,
        ),
        sa.Column("body", sa.LargeBinary(), nullable=False),
        sa.Column(
            "created_at", sa.DateTime(timezone=True), server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.ForeignKeyConstraint(
            ["vhost_id"], ["vhosts.id"], name=op.f("fk_outbox_vhost_id_vhosts"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_outbox")),
    )  # fmt: skip
    op.create_table(
        "outbox_dead",
        sa.Column("id", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column("vhost_id", sa.Integer(), nullable=True),
        sa.Column("exchange", sa.String(length=255), nullable=False),
        sa.Column("routing_key", sa.String(length=255), nullable=False),
        sa.Column("properties", sa.dialects.postgresql.JSONB(), nullable=False),
        sa.Column("body", sa.LargeBinary(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column(
            "failed_at", sa.DateTime(timezone=True), server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.Column("error", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_outbox_dead")),
    )  # fmt: skip
    op.create_table(
        "outbox_drain",
        sa.Column("id", sa.SmallInteger(), autoincrement=False, nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_outbox_drain")),
    )
    op.execute("INSERT INTO outbox_drain (id) VALUES (1)")
    op.create_table(
        "schema_compat",
        sa.Column("revision", sa.String(length=32), nullable=False),
        sa.Column("down_revision", sa.String(length=32), nullable=True),
        sa.Column("oldest_node", sa.String(length=32), nullable=False),
        sa.Column("phase", sa.String(length=16), nullable=False),
        sa.PrimaryKeyConstraint("revision", name=op.f("pk_schema_compat")),
    )
    op.execute(
        sa.text(
            "INSERT INTO schema_compat (revision, down_revision, oldest_node, phase) "
            "VALUES (:r, :d, :o, :p)"
        ).bindparams(r=revision, d=down_revision, o=oldest_node, p=phase)
    )
    schema = _schema()
    notify = "" if _is_cockroach() else "PERFORM pg_notify('cavalcade_outbox', '');"
    for statement in _functions(schema, notify):
        op.execute(statement)


def downgrade() -> None:
    for name in reversed(_DROPS):
        op.execute(f"DROP {name}")
    op.drop_table("schema_compat")
    op.drop_table("outbox_drain")
    op.drop_table("outbox_dead")
    op.drop_table("outbox")
    op.drop_column("nodes", "draining")


_DROPS = [
    "FUNCTION cavalcade_u32(bytea, integer)",
    "FUNCTION cavalcade_amqp_value(bytea, integer)",
    "FUNCTION cavalcade_amqp_table(bytea, integer)",
    "FUNCTION cavalcade_decode_properties(bytea)",
    "FUNCTION cavalcade_publish(text, text, bytea, jsonb, text)",
    "VIEW cavalcade_queue_stats",
    "VIEW cavalcade_messages",
    "VIEW cavalcade_nodes",
    "FUNCTION cavalcade_wake(bigint[])",
    "FUNCTION cavalcade_requeue_node(uuid, boolean)",
    "FUNCTION cavalcade_requeue_dead(interval)",
    "FUNCTION cavalcade_move_messages(text, text, bigint, text)",
    "FUNCTION cavalcade_republish_dead_letters(text, bigint, text)",
    "FUNCTION cavalcade_purge(text, text, text)",
]

_PROPERTY_NAMES = (
    "'content_type', 'content_encoding', 'headers', 'delivery_mode', 'priority', "
    "'correlation_id', 'reply_to', 'expiration', 'message_id', 'timestamp', 'type', "
    "'user_id', 'app_id', 'cluster_id'"
)


def _functions(schema: str, notify: str) -> list[str]:
    """Every function runs with the broker's schema on its path, whoever calls it."""
    path = f'SET search_path = "{schema}", pg_temp'
    return [
        s
        if "SET search_path" in s or "CREATE FUNCTION" not in s
        else s.replace(" AS $$", f" {path} AS $$", 1)
        for s in _statements(path, notify)
    ]


def _statements(path: str, notify: str) -> list[str]:
    return [
        # -- decoding the stored content-header bytes (0-based offsets) -----------
        """
CREATE FUNCTION cavalcade_u32(b bytea, pos integer) RETURNS bigint
LANGUAGE sql IMMUTABLE STRICT AS $$
  SELECT (get_byte(b, pos)::bigint << 24) | (get_byte(b, pos + 1) << 16)
       | (get_byte(b, pos + 2) << 8) | get_byte(b, pos + 3)
$$""",
        """
CREATE FUNCTION cavalcade_amqp_value(b bytea, pos integer, OUT val jsonb, OUT next integer)
LANGUAGE plpgsql IMMUTABLE STRICT AS $$
DECLARE
  t text := chr(get_byte(b, pos));
  n bigint;
  i bigint;
  stop bigint;
  r record;
  e integer;
  m numeric;
BEGIN
  pos := pos + 1;
  IF t = 'S' OR t = 'x' THEN
    n := cavalcade_u32(b, pos);
    IF t = 'S' THEN
      val := to_jsonb(convert_from(substring(b FROM pos + 5 FOR n::integer), 'UTF8'));
    ELSE
      val := to_jsonb(encode(substring(b FROM pos + 5 FOR n::integer), 'base64'));
    END IF;
    next := pos + 4 + n;
  ELSIF t = 't' THEN
    val := to_jsonb(get_byte(b, pos) <> 0); next := pos + 1;
  ELSIF t = 'b' THEN
    n := get_byte(b, pos); IF n > 127 THEN n := n - 256; END IF;
    val := to_jsonb(n); next := pos + 1;
  ELSIF t = 'B' THEN
    val := to_jsonb(get_byte(b, pos)); next := pos + 1;
  ELSIF t = 's' OR t = 'u' THEN
    n := (get_byte(b, pos) << 8) | get_byte(b, pos + 1);
    IF t = 's' AND n > 32767 THEN n := n - 65536; END IF;
    val := to_jsonb(n); next := pos + 2;
  ELSIF t = 'I' OR t = 'i' THEN
    n := cavalcade_u32(b, pos);
    IF t = 'I' AND n > 2147483647 THEN n := n - 4294967296; END IF;
    val := to_jsonb(n); next := pos + 4;
  ELSIF t = 'l' OR t = 'L' OR t = 'T' THEN
    n := (cavalcade_u32(b, pos) << 32) | cavalcade_u32(b, pos + 4);
    val := to_jsonb(n); next := pos + 8;
  ELSIF t = 'f' THEN
    n := cavalcade_u32(b, pos);
    e := ((n >> 23) & 255)::integer;
    m := (n & 8388607)::numeric;
    IF e = 255 THEN val := 'null';
    ELSIF e = 0 THEN val := to_jsonb((m / 8388608 * power(2::numeric, -126))::float8);
    ELSE val := to_jsonb(((1 + m / 8388608) * power(2::numeric, e - 127))::float8);
    END IF;
    IF (n >> 31) = 1 AND val <> 'null' THEN val := to_jsonb(-(val::text::float8)); END IF;
    next := pos + 4;
  ELSIF t = 'd' THEN
    n := cavalcade_u32(b, pos);
    i := cavalcade_u32(b, pos + 4);
    e := ((n >> 20) & 2047)::integer;
    m := ((n & 1048575)::numeric * 4294967296 + i);
    IF e = 2047 THEN val := 'null';
    ELSIF e = 0 THEN val := to_jsonb((m / 4503599627370496 * power(2::numeric, -1022))::float8);
    ELSE val := to_jsonb(((1 + m / 4503599627370496) * power(2::numeric, e - 1023))::float8);
    END IF;
    IF (n >> 31) = 1 AND val <> 'null' THEN val := to_jsonb(-(val::text::float8)); END IF;
    next := pos + 8;
  ELSIF t = 'D' THEN
    n := cavalcade_u32(b, pos + 1);
    IF n > 2147483647 THEN n := n - 4294967296; END IF;
    val := to_jsonb(n::numeric / power(10::numeric, get_byte(b, pos)));
    next := pos + 5;
  ELSIF t = 'F' THEN
    SELECT * INTO r FROM cavalcade_amqp_table(b, pos);
    val := r.val; next := r.next;
  ELSIF t = 'A' THEN
    n := cavalcade_u32(b, pos);
    stop := pos + 4 + n;
    pos := pos + 4;
    val := '[]';
    WHILE pos < stop LOOP
      SELECT * INTO r FROM cavalcade_amqp_value(b, pos);
      val := val || jsonb_build_array(r.val);
      pos := r.next;
    END LOOP;
    next := stop;
  ELSE  -- 'V' and the undocumented NUL: void
    val := 'null'; next := pos;
  END IF;
END
$$""",
        """
CREATE FUNCTION cavalcade_amqp_table(b bytea, pos integer, OUT val jsonb, OUT next integer)
LANGUAGE plpgsql IMMUTABLE STRICT AS $$
DECLARE
  stop bigint := pos + 4 + cavalcade_u32(b, pos);
  klen integer;
  k text;
  r record;
BEGIN
  pos := pos + 4;
  val := '{}';
  WHILE pos < stop LOOP
    klen := get_byte(b, pos);
    k := convert_from(substring(b FROM pos + 2 FOR klen), 'UTF8');
    SELECT * INTO r FROM cavalcade_amqp_value(b, pos + 1 + klen);
    val := val || jsonb_build_object(k, r.val);
    pos := r.next;
  END LOOP;
  next := stop;
END
$$""",
        """
CREATE FUNCTION cavalcade_decode_properties(raw bytea) RETURNS jsonb
LANGUAGE plpgsql IMMUTABLE STRICT AS $$
DECLARE
  flags integer;
  pos integer := 2;
  res jsonb := '{}';
  names text[] := ARRAY['content_type', 'content_encoding', 'headers', 'delivery_mode',
                        'priority', 'correlation_id', 'reply_to', 'expiration', 'message_id',
                        'timestamp', 'type', 'user_id', 'app_id', 'cluster_id'];
  kinds text[] := ARRAY['s', 's', 't', 'o', 'o', 's', 's', 's', 's', 'q', 's', 's', 's', 's'];
  bit integer;
  n integer;
  r record;
BEGIN
  IF octet_length(raw) < 2 THEN RETURN NULL; END IF;
  flags := (get_byte(raw, 0) << 8) | get_byte(raw, 1);
  FOR idx IN 1..14 LOOP
    bit := 16 - idx;
    CONTINUE WHEN flags & (1 << bit) = 0;
    IF kinds[idx] = 's' THEN
      n := get_byte(raw, pos);
      res := res || jsonb_build_object(
        names[idx], convert_from(substring(raw FROM pos + 2 FOR n), 'UTF8'));
      pos := pos + 1 + n;
    ELSIF kinds[idx] = 'o' THEN
      res := res || jsonb_build_object(names[idx], get_byte(raw, pos));
      pos := pos + 1;
    ELSIF kinds[idx] = 'q' THEN
      res := res || jsonb_build_object(
        names[idx], (cavalcade_u32(raw, pos) << 32) | cavalcade_u32(raw, pos + 4));
      pos := pos + 8;
    ELSE
      SELECT * INTO r FROM cavalcade_amqp_table(raw, pos);
      res := res || jsonb_build_object(names[idx], r.val);
      pos := r.next;
    END IF;
  END LOOP;
  RETURN res;
EXCEPTION WHEN others THEN
  RETURN jsonb_build_object('undecodable', SQLERRM);
END
$$""",
        # -- transactional publish -------------------------------------------------
        f"""
CREATE FUNCTION cavalcade_publish(
  exchange text, routing_key text, body bytea,
  properties jsonb DEFAULT '{{}}', vhost text DEFAULT '/') RETURNS bigint
LANGUAGE plpgsql SECURITY DEFINER {path} AS $$
#variable_conflict use_variable
DECLARE
  v integer;
  is_internal boolean;
  bad text;
  new_id bigint;
BEGIN
  IF exchange IS NULL OR routing_key IS NULL OR body IS NULL OR vhost IS NULL THEN
    RAISE EXCEPTION 'cavalcade_publish: exchange, routing_key, body and vhost must not be NULL'
      USING ERRCODE = '22004';
  END IF;
  IF octet_length(exchange) > 255 OR octet_length(routing_key) > 255 THEN
    RAISE EXCEPTION 'cavalcade_publish: exchange and routing_key are at most 255 bytes'
      USING ERRCODE = '22001';
  END IF;
  properties := coalesce(properties, '{{}}');
  IF jsonb_typeof(properties) <> 'object' THEN
    RAISE EXCEPTION 'cavalcade_publish: properties must be a JSON object'
      USING ERRCODE = '22023';
  END IF;
  SELECT string_agg(k, ', ') INTO bad FROM jsonb_object_keys(properties) AS k
   WHERE k NOT IN ({_PROPERTY_NAMES});
  IF bad IS NOT NULL THEN
    RAISE EXCEPTION 'cavalcade_publish: unknown properties: %', bad USING ERRCODE = '22023';
  END IF;
  SELECT string_agg(k, ', ') INTO bad FROM jsonb_each(properties) AS p(k, x)
   WHERE jsonb_typeof(x) <> 'null' AND jsonb_typeof(x) <> CASE
     WHEN k = 'headers' THEN 'object'
     WHEN k IN ('delivery_mode', 'priority', 'timestamp') THEN 'number'
     WHEN k = 'expiration' THEN jsonb_typeof(x)
     ELSE 'string' END;
  IF bad IS NOT NULL THEN
    RAISE EXCEPTION 'cavalcade_publish: properties of the wrong type: %', bad
      USING ERRCODE = '22023';
  END IF;
  IF properties ? 'delivery_mode' AND properties->>'delivery_mode' NOT IN ('1', '2') THEN
    RAISE EXCEPTION 'cavalcade_publish: delivery_mode is 1 or 2' USING ERRCODE = '22023';
  END IF;
  IF properties ? 'priority'
     AND (properties->>'priority')::numeric NOT BETWEEN 0 AND 255 THEN
    RAISE EXCEPTION 'cavalcade_publish: priority is 0..255' USING ERRCODE = '22023';
  END IF;
  IF properties ? 'expiration' AND properties->>'expiration' !~ '^[0-9]+$' THEN
    RAISE EXCEPTION 'cavalcade_publish: expiration is a non-negative integer (ms)'
      USING ERRCODE = '22023';
  END IF;
  SELECT id INTO v FROM vhosts WHERE name = vhost;
  IF v IS NULL THEN
    RAISE EXCEPTION 'cavalcade_publish: no vhost ''%''', vhost USING ERRCODE = '42704';
  END IF;
  IF exchange <> '' THEN
    SELECT internal INTO is_internal FROM exchanges WHERE vhost_id = v AND name = exchange;
    IF is_internal IS NULL THEN
      RAISE EXCEPTION 'cavalcade_publish: NOT_FOUND - no exchange ''%'' in vhost ''%''',
        exchange, vhost USING ERRCODE = '42704';
    END IF;
    IF is_internal THEN
      RAISE EXCEPTION
        'cavalcade_publish: ACCESS_REFUSED - exchange ''%'' in vhost ''%'' is internal',
        exchange, vhost USING ERRCODE = '42501';
    END IF;
  END IF;
  INSERT INTO outbox (vhost_id, exchange, routing_key, properties, body)
  VALUES (v, exchange, routing_key, properties, body)
  RETURNING id INTO new_id;
  {notify}
  RETURN new_id;
END
$$""",
        "REVOKE ALL ON FUNCTION cavalcade_publish(text, text, bytea, jsonb, text) FROM PUBLIC",
        # -- stable views ----------------------------------------------------------
        """
CREATE VIEW cavalcade_queue_stats AS
SELECT v.name AS vhost,
       q.name AS queue,
       q.id AS queue_id,
       q.durable,
       q.auto_delete,
       q.exclusive_node IS NOT NULL AS exclusive,
       q.arguments,
       coalesce(m.messages, 0) AS messages,
       coalesce(m.ready, 0) AS ready,
       coalesce(m.unacked, 0) AS unacked,
       coalesce(m.delayed, 0) AS delayed,
       coalesce(m.bytes, 0) AS bytes,
       m.oldest_ready_at,
       extract(epoch FROM now() - m.oldest_ready_at)::float8 AS oldest_ready_age_s,
       (SELECT count(*) FROM consumers c WHERE c.queue_id = q.id) AS consumers
  FROM queues q
  JOIN vhosts v ON v.id = q.vhost_id
  LEFT JOIN LATERAL (
    SELECT count(*) AS messages,
           count(*) FILTER (WHERE owner_node IS NULL
                              AND (available_at IS NULL OR available_at <= now())
                              AND (expires_at IS NULL OR expires_at > now())) AS ready,
           count(*) FILTER (WHERE owner_node IS NOT NULL) AS unacked,
           count(*) FILTER (WHERE owner_node IS NULL AND available_at > now()) AS delayed,
           sum(octet_length(body)) AS bytes,
           min(published_at) FILTER (WHERE owner_node IS NULL
                                       AND (available_at IS NULL OR available_at <= now()))
             AS oldest_ready_at
      FROM messages WHERE queue_id = q.id) m ON true""",
        """
CREATE VIEW cavalcade_messages AS
SELECT m.id,
       v.name AS vhost,
       q.name AS queue,
       m.queue_id,
       CASE WHEN m.owner_node IS NOT NULL THEN 'unacked'
            WHEN m.expires_at <= now() THEN 'expired'
            WHEN m.available_at > now() THEN 'delayed'
            ELSE 'ready' END AS state,
       m.owner_node,
       m.redelivered,
       m.delivery_count,
       m.priority,
       m.persistent,
       m.published_at,
       m.available_at,
       m.expires_at,
       m.exchange,
       m.routing_key,
       cavalcade_decode_properties(m.properties) AS properties,
       octet_length(m.body) AS body_size,
       m.body
  FROM messages m
  JOIN queues q ON q.id = m.queue_id
  JOIN vhosts v ON v.id = q.vhost_id""",
        """
CREATE VIEW cavalcade_nodes AS
SELECT n.id,
       n.name,
       n.started_at,
       n.heartbeat_at,
       extract(epoch FROM now() - n.heartbeat_at)::float8 AS heartbeat_age_s,
       n.draining,
       (SELECT count(*) FROM connections c WHERE c.node_id = n.id) AS connections,
       (SELECT count(*) FROM messages m WHERE m.owner_node = n.id) AS unacked
  FROM nodes n""",
        # -- repair functions (SECURITY INVOKER: run them as the broker's owner) -------
        """
CREATE FUNCTION cavalcade_wake(queue_ids bigint[]) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
  -- Nodes in poll mode find the messages at their next poll; this only hurries LISTENers.
  IF queue_ids IS NOT NULL AND cardinality(queue_ids) > 0 THEN
    BEGIN
      IF cardinality(queue_ids) > 500 THEN
        PERFORM pg_notify('cavalcade_wake', '-:*');
      ELSE
        PERFORM pg_notify('cavalcade_wake', '-:' || array_to_string(queue_ids, ','));
      END IF;
    EXCEPTION WHEN undefined_function THEN NULL;
    END;
  END IF;
END
$$""",
        """
CREATE FUNCTION cavalcade_requeue_node(node uuid, force boolean DEFAULT false) RETURNS bigint
LANGUAGE plpgsql AS $$
DECLARE
  n bigint;
  touched bigint[];
BEGIN
  IF NOT force AND EXISTS (SELECT 1 FROM nodes
                            WHERE id = node AND heartbeat_at > now() - interval '10 seconds') THEN
    RAISE EXCEPTION 'node % is alive (heartbeat within 10 s): drain or stop it, or pass force',
      node USING ERRCODE = '55000';
  END IF;
  WITH r AS (
    UPDATE messages SET owner_node = NULL, owner_channel = NULL, redelivered = true
     WHERE owner_node = node RETURNING queue_id)
  SELECT count(*), array_agg(DISTINCT queue_id) INTO n, touched FROM r;
  -- Its consumers, connections and exclusive queues go with the row (as when reaped).
  IF EXISTS (SELECT 1 FROM nodes WHERE id = node) THEN
    DELETE FROM nodes WHERE id = node;
    UPDATE vhosts SET topology_version = topology_version + 1;
  END IF;
  PERFORM cavalcade_wake(touched);
  RETURN n;
END
$$""",
        """
CREATE FUNCTION cavalcade_requeue_dead(threshold interval DEFAULT '10 seconds') RETURNS bigint
LANGUAGE plpgsql AS $$
DECLARE
  total bigint := 0;
  node uuid;
BEGIN
  FOR node IN
    SELECT id FROM nodes WHERE heartbeat_at <= now() - threshold
    UNION
    SELECT DISTINCT owner_node FROM messages m
     WHERE owner_node IS NOT NULL AND NOT EXISTS (SELECT 1 FROM nodes WHERE id = m.owner_node)
  LOOP
    total := total + cavalcade_requeue_node(node, true);
  END LOOP;
  RETURN total;
END
$$""",
        """
CREATE FUNCTION cavalcade_move_messages(
  source text, destination text, max_count bigint DEFAULT NULL, vhost text DEFAULT '/')
RETURNS bigint
LANGUAGE plpgsql AS $$
#variable_conflict use_variable
DECLARE
  src bigint;
  dst bigint;
  max_prio integer;
  n bigint;
BEGIN
  SELECT q.id INTO src FROM queues q JOIN vhosts v ON v.id = q.vhost_id
   WHERE v.name = vhost AND q.name = source;
  SELECT q.id, CASE WHEN jsonb_typeof(q.arguments->'x-max-priority') = 'number'
                    THEN (q.arguments->>'x-max-priority')::integer END
    INTO dst, max_prio
    FROM queues q JOIN vhosts v ON v.id = q.vhost_id
   WHERE v.name = vhost AND q.name = destination;
  IF src IS NULL OR dst IS NULL THEN
    RAISE EXCEPTION 'no queue ''%'' in vhost ''%''',
      CASE WHEN src IS NULL THEN source ELSE destination END, vhost USING ERRCODE = '42704';
  END IF;
  IF src = dst THEN RETURN 0; END IF;
  WITH picked AS MATERIALIZED (
    SELECT id FROM messages
     WHERE queue_id = src AND owner_node IS NULL
     ORDER BY priority DESC, id
     LIMIT max_count
     FOR UPDATE SKIP LOCKED),
  moved AS (
    DELETE FROM messages m USING picked WHERE m.id = picked.id
    RETURNING m.*),
  ins AS (
    INSERT INTO messages (queue_id, priority, persistent, published_at, available_at,
                          expires_at, exchange, routing_key, properties, content_type,
                          message_id, correlation_id, expiration, body)
    SELECT dst,
           CASE WHEN max_prio IS NULL THEN 0
                ELSE least(max_prio, coalesce(
                  (cavalcade_decode_properties(properties)->>'priority')::integer, 0)) END,
           persistent, published_at, available_at, expires_at, exchange, routing_key,
           properties, content_type, message_id, correlation_id, expiration, body
      FROM moved ORDER BY priority DESC, id
    RETURNING 1)
  SELECT count(*) INTO n FROM ins;
  PERFORM cavalcade_wake(ARRAY[dst]);
  RETURN n;
END
$$""",
        """
CREATE FUNCTION cavalcade_republish_dead_letters(
  queue text, max_count bigint DEFAULT NULL, vhost text DEFAULT '/') RETURNS bigint
LANGUAGE plpgsql AS $$
#variable_conflict use_variable
DECLARE
  src bigint;
  vid integer;
  n bigint;
  targets bigint[];
BEGIN
  SELECT q.id, q.vhost_id INTO src, vid FROM queues q JOIN vhosts v ON v.id = q.vhost_id
   WHERE v.name = vhost AND q.name = queue;
  IF src IS NULL THEN
    RAISE EXCEPTION 'no queue ''%'' in vhost ''%''', queue, vhost USING ERRCODE = '42704';
  END IF;
  -- x-death lists the most recent death first: its queue is where the message came from.
  WITH candidates AS MATERIALIZED (
    SELECT m.id, t.id AS target,
           CASE WHEN jsonb_typeof(t.arguments->'x-max-priority') = 'number'
                THEN least((t.arguments->>'x-max-priority')::integer,
                           coalesce((d.p->>'priority')::integer, 0))
                ELSE 0 END AS prio
      FROM messages m
      CROSS JOIN LATERAL (SELECT cavalcade_decode_properties(m.properties) AS p) d
      JOIN queues t ON t.vhost_id = vid AND t.name = d.p->'headers'->'x-death'->0->>'queue'
     WHERE m.queue_id = src AND m.owner_node IS NULL AND t.id <> src
     ORDER BY m.priority DESC, m.id
     LIMIT max_count
     FOR UPDATE OF m SKIP LOCKED),
  moved AS (
    DELETE FROM messages m USING candidates c WHERE m.id = c.id
    RETURNING m.*, c.target, c.prio),
  ins AS (
    INSERT INTO messages (queue_id, priority, persistent, published_at, exchange, routing_key,
                          properties, content_type, message_id, correlation_id, expiration,
                          body)
    SELECT target, prio, persistent, published_at, exchange, routing_key, properties,
           content_type, message_id, correlation_id, expiration, body
      FROM moved ORDER BY priority DESC, id
    RETURNING queue_id)
  SELECT count(*), array_agg(DISTINCT queue_id) INTO n, targets FROM ins;
  PERFORM cavalcade_wake(targets);
  RETURN n;
END
$$""",
        """
CREATE FUNCTION cavalcade_purge(
  queue text, predicate text DEFAULT NULL, vhost text DEFAULT '/') RETURNS bigint
LANGUAGE plpgsql AS $$
#variable_conflict use_variable
DECLARE
  qid bigint;
  n bigint;
BEGIN
  SELECT q.id INTO qid FROM queues q JOIN vhosts v ON v.id = q.vhost_id
   WHERE v.name = vhost AND q.name = queue;
  IF qid IS NULL THEN
    RAISE EXCEPTION 'no queue ''%'' in vhost ''%''', queue, vhost USING ERRCODE = '42704';
  END IF;
  -- The predicate is SQL over the columns of cavalcade_messages (runs with the
  -- caller's rights); unacked messages are never touched.
  EXECUTE format(
    'DELETE FROM messages WHERE owner_node IS NULL AND id IN ('
    ' SELECT id FROM cavalcade_messages WHERE queue_id = $1 AND state <> ''unacked'''
    ' AND (%s))', coalesce(predicate, 'true'))
    USING qid;
  GET DIAGNOSTICS n = ROW_COUNT;
  RETURN n;
END
$$""",
    ]
