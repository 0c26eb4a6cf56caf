-- A Supabase (PostgreSQL) table that takes mqttbuffer's default body as a PostgREST bulk insert:
-- POST https://<project>.supabase.co/rest/v1/mqtt_messages with a JSON array of message objects.
-- Run it in the SQL editor (or psql). mqttbuffer's README, section "Supabase", explains the key
-- and the headers to set.

create table if not exists public.mqtt_messages (
    id               text        primary key,         -- stable per message: resends are duplicates
    topic            text        not null,
    payload          jsonb,                            -- the JSON value, or a string (see payload_encoding)
    qos              smallint    not null,
    retain           boolean     not null,
    received_at      timestamptz not null,             -- when mqttbuffer took it from the broker
    payload_encoding text        not null default 'json'
                     check (payload_encoding in ('json', 'text', 'base64')),
    inserted_at      timestamptz not null default now()
);

create index if not exists mqtt_messages_topic_received_at on public.mqtt_messages (topic, received_at);

-- Row-level security: the key mqttbuffer sends (the project's anon key, role "anon") may insert
-- and nothing else: no policy lets it read, change or delete rows. A service_role key bypasses
-- row-level security altogether; keep that one off devices.
alter table public.mqtt_messages enable row level security;

grant insert on public.mqtt_messages to anon;

drop policy if exists "mqttbuffer inserts" on public.mqtt_messages;
create policy "mqttbuffer inserts" on public.mqtt_messages
    for insert to anon
    with check (true);
