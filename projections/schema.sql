-- enrollstream read models: the whole schema as migrations 0001..0020 build it. GENERATED: do not edit.
-- Regenerate with `python -m enrollstream.adapters.postgres.schema_dump --write` after adding a migration;
-- tests/integration/test_schema_file.py fails while this file and the migrations disagree.
-- Change the schema with a new migration in this directory, never here.

--
-- PostgreSQL database dump
--

SET statement_timeout = 0;
SET lock_timeout = 0;
SET idle_in_transaction_session_timeout = 0;
SET transaction_timeout = 0;
SET client_encoding = 'UTF8';
SET standard_conforming_strings = on;
SELECT pg_catalog.set_config('search_path', '', false);
SET check_function_bodies = false;
SET xmloption = content;
SET client_min_messages = warning;
SET row_security = off;

--
-- Name: pg_trgm; Type: EXTENSION; Schema: -; Owner: -
--

CREATE EXTENSION IF NOT EXISTS pg_trgm WITH SCHEMA public;

SET default_tablespace = '';

SET default_table_access_method = heap;

--
-- Name: api_keys; Type: TABLE; Schema: public; Owner: -
--

CREATE TABLE public.api_keys (
    key_id text NOT NULL,
    account_id text NOT NULL,
    key_sha256 bytea NOT NULL,
    label text DEFAULT ''::text NOT NULL,
    created_at timestamp with time zone DEFAULT now() NOT NULL,
    revoked_at timestamp with time zone,
    CONSTRAINT api_keys_account_id_check CHECK (((length(account_id) >= 1) AND (length(account_id) <= 200)))
);

--
-- Name: bulk_enrollments; Type: TABLE; Schema: public; Owner: -
--

CREATE TABLE public.bulk_enrollments (
    bulk_enroll_id text NOT NULL,
    event_id text NOT NULL,
    account_id text NOT NULL,
    campaign_id text NOT NULL,
    campaign_version integer NOT NULL,
    contact_import_id text NOT NULL,
    contacts integer NOT NULL,
    batches integer NOT NULL,
    batch_size integer NOT NULL,
    requested_by text DEFAULT ''::text NOT NULL,
    requested_at timestamp with time zone NOT NULL
);

--
-- Name: enrollment_skips; Type: TABLE; Schema: public; Owner: -
--

CREATE TABLE public.enrollment_skips (
    event_id text NOT NULL,
    account_id text NOT NULL,
    contact_id text NOT NULL,
    campaign_id text NOT NULL,
    kind text NOT NULL,
    reason text NOT NULL,
    contact_name text,
    email text,
    batch_number integer DEFAULT 0 NOT NULL,
    contact_import_id text,
    evidence jsonb DEFAULT '{}'::jsonb NOT NULL,
    skipped_at timestamp with time zone NOT NULL,
    bulk_enroll_id text
);

--
-- Name: enrollments; Type: TABLE; Schema: public; Owner: -
--

CREATE TABLE public.enrollments (
    enrollment_id text NOT NULL,
    account_id text NOT NULL,
    contact_id text NOT NULL,
    campaign_id text NOT NULL,
    campaign_version integer,
    contact_name text,
    email text,
    mobile text,
    status text NOT NULL,
    stage text DEFAULT 'pending'::text NOT NULL,
    stop_reason text,
    outcome text,
    current_step integer,
    total_steps integer,
    next_execution_at timestamp with time zone,
    enrolled_at timestamp with time zone NOT NULL,
    batch_number integer DEFAULT 0 NOT NULL,
    priority boolean DEFAULT false NOT NULL,
    sent_at timestamp with time zone,
    opened_at timestamp with time zone,
    replied_at timestamp with time zone,
    bounced_at timestamp with time zone,
    bounce_reason text,
    hours_to_reply numeric(10,2),
    completed_at timestamp with time zone,
    last_version bigint NOT NULL,
    updated_at timestamp with time zone NOT NULL,
    bulk_enroll_id text,
    failure_reason text,
    failure_detail text,
    mx_check text DEFAULT 'not_required'::text NOT NULL,
    CONSTRAINT enrollments_mx_check_check CHECK ((mx_check = ANY (ARRAY['verified'::text, 'unverified'::text, 'not_required'::text])))
);

--
-- Name: bulk_enroll_summaries; Type: VIEW; Schema: public; Owner: -
--

CREATE VIEW public.bulk_enroll_summaries AS
 SELECT b.bulk_enroll_id,
    b.account_id,
    b.campaign_id,
    b.contact_import_id,
    b.contacts,
    b.batches,
    b.batch_size,
    b.requested_by,
    b.requested_at,
    COALESCE(e.enrolled, (0)::bigint) AS enrolled,
    COALESCE(s.skipped, (0)::bigint) AS skipped,
    COALESCE(s.skipped_list, '[]'::jsonb) AS skipped_list,
    ((b.contacts - COALESCE(e.enrolled, (0)::bigint)) - COALESCE(s.skipped, (0)::bigint)) AS pending,
    (((b.contacts - COALESCE(e.enrolled, (0)::bigint)) - COALESCE(s.skipped, (0)::bigint)) <= 0) AS complete
   FROM ((public.bulk_enrollments b
     LEFT JOIN LATERAL ( SELECT count(*) AS enrolled
           FROM public.enrollments
          WHERE ((enrollments.account_id = b.account_id) AND (enrollments.bulk_enroll_id = b.bulk_enroll_id))) e ON (true))
     LEFT JOIN LATERAL ( SELECT count(*) AS skipped,
            jsonb_agg(jsonb_build_object('contact_id', enrollment_skips.contact_id, 'email', enrollment_skips.email, 'reason', enrollment_skips.reason, 'kind', enrollment_skips.kind) ORDER BY enrollment_skips.batch_number, enrollment_skips.skipped_at, enrollment_skips.contact_id) AS skipped_list
           FROM public.enrollment_skips
          WHERE ((enrollment_skips.account_id = b.account_id) AND (enrollment_skips.bulk_enroll_id = b.bulk_enroll_id))) s ON (true));

--
-- Name: campaign_definitions; Type: TABLE; Schema: public; Owner: -
--

CREATE TABLE public.campaign_definitions (
    account_id text NOT NULL,
    digest text NOT NULL,
    definition jsonb NOT NULL
);

--
-- Name: campaign_stats; Type: TABLE; Schema: public; Owner: -
--

CREATE TABLE public.campaign_stats (
    account_id text NOT NULL,
    campaign_id text NOT NULL,
    total bigint DEFAULT 0 NOT NULL,
    pending bigint DEFAULT 0 NOT NULL,
    queued bigint DEFAULT 0 NOT NULL,
    awaiting_trigger bigint DEFAULT 0 NOT NULL,
    active bigint DEFAULT 0 NOT NULL,
    processing bigint DEFAULT 0 NOT NULL,
    delivered bigint DEFAULT 0 NOT NULL,
    completed bigint DEFAULT 0 NOT NULL,
    stopped bigint DEFAULT 0 NOT NULL,
    failed bigint DEFAULT 0 NOT NULL,
    expired bigint DEFAULT 0 NOT NULL,
    handed_off bigint DEFAULT 0 NOT NULL,
    unenrolled bigint DEFAULT 0 NOT NULL
);

--
-- Name: campaign_stats_cards; Type: VIEW; Schema: public; Owner: -
--

CREATE VIEW public.campaign_stats_cards AS
 SELECT account_id,
    campaign_id,
    total,
    (pending + active) AS active,
    processing,
    (completed + delivered) AS completed,
    stopped,
    failed,
    queued,
    awaiting_trigger,
    expired,
    handed_off,
    unenrolled
   FROM public.campaign_stats;

--
-- Name: decisions; Type: TABLE; Schema: public; Owner: -
--

CREATE TABLE public.decisions (
    result_partition integer NOT NULL,
    result_offset bigint NOT NULL,
    command_id text NOT NULL,
    command_type text NOT NULL,
    account_id text NOT NULL,
    contact_id text NOT NULL,
    campaign_id text,
    enrollment_id text,
    actor text NOT NULL,
    status text NOT NULL,
    code text,
    message text DEFAULT ''::text NOT NULL,
    details jsonb DEFAULT '{}'::jsonb NOT NULL,
    event_ids text[] DEFAULT '{}'::text[] NOT NULL,
    enrollment_ids text[] DEFAULT '{}'::text[] NOT NULL,
    contact_version bigint,
    issued_at timestamp with time zone
);

--
-- Name: enrollment_timeline; Type: TABLE; Schema: public; Owner: -
--

CREATE TABLE public.enrollment_timeline (
    event_id text NOT NULL,
    account_id text NOT NULL,
    contact_id text NOT NULL,
    campaign_id text,
    enrollment_id text,
    version bigint NOT NULL,
    type text NOT NULL,
    occurred_at timestamp with time zone NOT NULL,
    causation_id text NOT NULL,
    data jsonb NOT NULL,
    event_partition integer,
    event_offset bigint,
    campaign_definition text
);

--
-- Name: enrollment_timeline_events; Type: VIEW; Schema: public; Owner: -
--

CREATE VIEW public.enrollment_timeline_events AS
 SELECT t.event_id,
    t.account_id,
    t.contact_id,
    t.campaign_id,
    t.enrollment_id,
    t.version,
    t.type,
    t.occurred_at,
    t.causation_id,
        CASE
            WHEN (t.campaign_definition IS NULL) THEN t.data
            ELSE (t.data || jsonb_build_object('campaign', d.definition))
        END AS data,
    t.event_partition,
    t.event_offset
   FROM (public.enrollment_timeline t
     LEFT JOIN public.campaign_definitions d ON (((d.account_id = t.account_id) AND (d.digest = t.campaign_definition))));

--
-- Name: contact_why; Type: VIEW; Schema: public; Owner: -
--

CREATE VIEW public.contact_why AS
 SELECT t.account_id,
    t.contact_id,
    t.campaign_id,
    t.enrollment_id,
    t.version,
    (0)::bigint AS "position",
    'event'::text AS kind,
    t.occurred_at AS at,
    t.type AS what,
    t.causation_id AS command_id,
    d.command_type,
    d.actor,
    COALESCE(d.status, 'accepted'::text) AS status,
    NULL::text AS code,
    ''::text AS reason,
    t.data
   FROM (public.enrollment_timeline_events t
     LEFT JOIN public.decisions d ON (((d.command_id = t.causation_id) AND (d.account_id = t.account_id) AND (t.event_id = ANY (d.event_ids)))))
UNION ALL
 SELECT d.account_id,
    d.contact_id,
    COALESCE(d.campaign_id, e.campaign_id) AS campaign_id,
    d.enrollment_id,
    COALESCE(d.contact_version, (0)::bigint) AS version,
    (d.result_offset + 1) AS "position",
    'decision'::text AS kind,
    d.issued_at AS at,
    d.status AS what,
    d.command_id,
    d.command_type,
    d.actor,
    d.status,
    d.code,
    d.message AS reason,
    d.details AS data
   FROM (public.decisions d
     LEFT JOIN public.enrollments e ON (((e.enrollment_id = d.enrollment_id) AND (e.account_id = d.account_id))))
  WHERE (cardinality(d.event_ids) = 0);

--
-- Name: contacts; Type: TABLE; Schema: public; Owner: -
--

CREATE TABLE public.contacts (
    account_id text NOT NULL,
    contact_id text NOT NULL,
    name text DEFAULT ''::text NOT NULL,
    email text,
    mobile text,
    line_type text DEFAULT 'unknown'::text NOT NULL,
    time_zone text,
    opted_out boolean DEFAULT false NOT NULL,
    last_version bigint NOT NULL,
    updated_at timestamp with time zone NOT NULL
);

--
-- Name: delivery_ledger; Type: TABLE; Schema: public; Owner: -
--

CREATE TABLE public.delivery_ledger (
    enrollment_id text NOT NULL,
    step_index integer NOT NULL,
    attempt integer NOT NULL,
    message_id text NOT NULL,
    message_id_header text,
    account_id text NOT NULL,
    contact_id text NOT NULL,
    channel text NOT NULL,
    sender text NOT NULL,
    recipient text NOT NULL,
    state text DEFAULT 'started'::text NOT NULL,
    retryable boolean DEFAULT false NOT NULL,
    detail text DEFAULT ''::text NOT NULL,
    code integer,
    provider_message_id text,
    started_at timestamp with time zone NOT NULL,
    finished_at timestamp with time zone,
    reported boolean DEFAULT false NOT NULL,
    reported_at timestamp with time zone,
    dispatch integer DEFAULT 1 NOT NULL,
    retry_at timestamp with time zone,
    CONSTRAINT delivery_ledger_attempt_check CHECK ((attempt >= 1)),
    CONSTRAINT delivery_ledger_deferral_has_retry_at CHECK (((state = 'deferred'::text) = (retry_at IS NOT NULL))),
    CONSTRAINT delivery_ledger_dispatch_check CHECK ((dispatch >= 1)),
    CONSTRAINT delivery_ledger_state_check CHECK ((state = ANY (ARRAY['deferred'::text, 'started'::text, 'sent'::text, 'bounced'::text, 'failed'::text, 'unknown'::text, 'error'::text, 'invalid_recipient'::text]))),
    CONSTRAINT delivery_ledger_step_index_check CHECK ((step_index >= 0))
);

--
-- Name: enrollment_table; Type: VIEW; Schema: public; Owner: -
--

CREATE VIEW public.enrollment_table AS
 SELECT enrollment_id,
    account_id,
    contact_id,
    campaign_id,
    campaign_version,
    contact_name,
    email,
    mobile,
    status,
    stage,
    stop_reason,
    outcome,
    current_step,
    total_steps,
    next_execution_at,
    enrolled_at,
    batch_number,
    priority,
    sent_at,
    opened_at,
    replied_at,
    bounced_at,
    bounce_reason,
    hours_to_reply,
    completed_at,
    last_version,
    updated_at,
    bulk_enroll_id,
    failure_reason,
    failure_detail,
    mx_check,
        CASE
            WHEN ((current_step IS NOT NULL) AND (total_steps IS NOT NULL)) THEN ((('Step '::text || current_step) || ' of '::text) || total_steps)
            ELSE NULL::text
        END AS step_label,
        CASE
            WHEN (next_execution_at IS NULL) THEN NULL::text
            WHEN (next_execution_at < now()) THEN 'Overdue'::text
            WHEN (next_execution_at <= (now() + '01:00:00'::interval)) THEN 'Coming soon'::text
            ELSE 'Waiting'::text
        END AS next_execution_indicator,
        CASE
            WHEN (status = 'failed'::text) THEN 'Failed'::text
            WHEN ((status = 'stopped'::text) AND (stop_reason = 'opted_out'::text)) THEN 'Opted Out'::text
            WHEN (status = ANY (ARRAY['delivered'::text, 'completed'::text, 'stopped'::text, 'expired'::text, 'handed_off'::text, 'unenrolled'::text])) THEN
            CASE outcome
                WHEN 'responded'::text THEN 'Finished, responded'::text
                WHEN 'no_response'::text THEN 'Finished, no response'::text
                ELSE 'Finished, stopped'::text
            END
            ELSE 'Pending'::text
        END AS sequence_status
   FROM public.enrollments e;

--
-- Name: inbound_imap_checkpoints; Type: TABLE; Schema: public; Owner: -
--

CREATE TABLE public.inbound_imap_checkpoints (
    mailbox_key text NOT NULL,
    uidvalidity bigint NOT NULL,
    last_uid bigint DEFAULT 0 NOT NULL,
    updated_at timestamp with time zone DEFAULT now() NOT NULL
);

--
-- Name: inbound_unmatched; Type: TABLE; Schema: public; Owner: -
--

CREATE TABLE public.inbound_unmatched (
    id bigint NOT NULL,
    account_id text,
    inbound_message_id text NOT NULL,
    reason text NOT NULL,
    from_address text DEFAULT ''::text NOT NULL,
    subject text DEFAULT ''::text NOT NULL,
    received_at timestamp with time zone,
    kept_at timestamp with time zone DEFAULT now() NOT NULL,
    record text NOT NULL
);

--
-- Name: inbound_unmatched_id_seq; Type: SEQUENCE; Schema: public; Owner: -
--

CREATE SEQUENCE public.inbound_unmatched_id_seq
    START WITH 1
    INCREMENT BY 1
    NO MINVALUE
    NO MAXVALUE
    CACHE 1;

--
-- Name: inbound_unmatched_id_seq; Type: SEQUENCE OWNED BY; Schema: public; Owner: -
--

ALTER SEQUENCE public.inbound_unmatched_id_seq OWNED BY public.inbound_unmatched.id;

--
-- Name: projection_checkpoints; Type: TABLE; Schema: public; Owner: -
--

CREATE TABLE public.projection_checkpoints (
    projection text NOT NULL,
    topic text NOT NULL,
    partition integer NOT NULL,
    next_offset bigint NOT NULL,
    updated_at timestamp with time zone DEFAULT now() NOT NULL,
    CONSTRAINT projection_checkpoints_next_offset_check CHECK ((next_offset >= 0))
);

--
-- Name: replies; Type: TABLE; Schema: public; Owner: -
--

CREATE TABLE public.replies (
    event_id text NOT NULL,
    account_id text NOT NULL,
    contact_id text NOT NULL,
    campaign_id text NOT NULL,
    enrollment_id text NOT NULL,
    replied_at timestamp with time zone NOT NULL,
    hours_to_reply numeric(10,2),
    first_reply boolean NOT NULL,
    reply_action text NOT NULL,
    inbound_message_id text,
    excerpt text DEFAULT ''::text NOT NULL
);

--
-- Name: timers; Type: TABLE; Schema: public; Owner: -
--

CREATE TABLE public.timers (
    enrollment_id text NOT NULL,
    kind text NOT NULL,
    account_id text NOT NULL,
    contact_id text NOT NULL,
    campaign_id text NOT NULL,
    step_index integer,
    attempt integer,
    due_at timestamp with time zone NOT NULL,
    batch_number integer DEFAULT 0 NOT NULL,
    priority boolean DEFAULT false NOT NULL,
    enrolled_at timestamp with time zone NOT NULL,
    claimed_until timestamp with time zone,
    CONSTRAINT timers_check CHECK (((kind = 'step_due'::text) = ((step_index IS NOT NULL) AND (attempt IS NOT NULL)))),
    CONSTRAINT timers_kind_check CHECK ((kind = ANY (ARRAY['step_due'::text, 'expiry'::text, 'wait_timeout'::text])))
);

--
-- Name: unprojectable_events; Type: TABLE; Schema: public; Owner: -
--

CREATE TABLE public.unprojectable_events (
    projection text NOT NULL,
    topic text NOT NULL,
    partition integer NOT NULL,
    "offset" bigint NOT NULL,
    event_id text,
    type text,
    account_id text,
    reason text NOT NULL,
    value bytea NOT NULL,
    value_size integer NOT NULL,
    value_sha256 text NOT NULL,
    at timestamp with time zone DEFAULT now() NOT NULL
);

--
-- Name: inbound_unmatched id; Type: DEFAULT; Schema: public; Owner: -
--

ALTER TABLE ONLY public.inbound_unmatched ALTER COLUMN id SET DEFAULT nextval('public.inbound_unmatched_id_seq'::regclass);

--
-- Name: api_keys api_keys_key_sha256_key; Type: CONSTRAINT; Schema: public; Owner: -
--

ALTER TABLE ONLY public.api_keys
    ADD CONSTRAINT api_keys_key_sha256_key UNIQUE (key_sha256);

--
-- Name: api_keys api_keys_pkey; Type: CONSTRAINT; Schema: public; Owner: -
--

ALTER TABLE ONLY public.api_keys
    ADD CONSTRAINT api_keys_pkey PRIMARY KEY (key_id);

--
-- Name: bulk_enrollments bulk_enrollments_event_id_key; Type: CONSTRAINT; Schema: public; Owner: -
--

ALTER TABLE ONLY public.bulk_enrollments
    ADD CONSTRAINT bulk_enrollments_event_id_key UNIQUE (event_id);

--
-- Name: bulk_enrollments bulk_enrollments_pkey; Type: CONSTRAINT; Schema: public; Owner: -
--

ALTER TABLE ONLY public.bulk_enrollments
    ADD CONSTRAINT bulk_enrollments_pkey PRIMARY KEY (account_id, bulk_enroll_id);

--
-- Name: campaign_definitions campaign_definitions_pkey; Type: CONSTRAINT; Schema: public; Owner: -
--

ALTER TABLE ONLY public.campaign_definitions
    ADD CONSTRAINT campaign_definitions_pkey PRIMARY KEY (account_id, digest);

--
-- Name: campaign_stats campaign_stats_pkey; Type: CONSTRAINT; Schema: public; Owner: -
--

ALTER TABLE ONLY public.campaign_stats
    ADD CONSTRAINT campaign_stats_pkey PRIMARY KEY (account_id, campaign_id);

--
-- Name: contacts contacts_pkey; Type: CONSTRAINT; Schema: public; Owner: -
--

ALTER TABLE ONLY public.contacts
    ADD CONSTRAINT contacts_pkey PRIMARY KEY (account_id, contact_id);

--
-- Name: decisions decisions_pkey; Type: CONSTRAINT; Schema: public; Owner: -
--

ALTER TABLE ONLY public.decisions
    ADD CONSTRAINT decisions_pkey PRIMARY KEY (result_partition, result_offset);

--
-- Name: delivery_ledger delivery_ledger_message_id_header_key; Type: CONSTRAINT; Schema: public; Owner: -
--

ALTER TABLE ONLY public.delivery_ledger
    ADD CONSTRAINT delivery_ledger_message_id_header_key UNIQUE (message_id_header);

--
-- Name: delivery_ledger delivery_ledger_message_id_key; Type: CONSTRAINT; Schema: public; Owner: -
--

ALTER TABLE ONLY public.delivery_ledger
    ADD CONSTRAINT delivery_ledger_message_id_key UNIQUE (message_id);

--
-- Name: delivery_ledger delivery_ledger_pkey; Type: CONSTRAINT; Schema: public; Owner: -
--

ALTER TABLE ONLY public.delivery_ledger
    ADD CONSTRAINT delivery_ledger_pkey PRIMARY KEY (enrollment_id, step_index, attempt);

--
-- Name: enrollment_skips enrollment_skips_pkey; Type: CONSTRAINT; Schema: public; Owner: -
--

ALTER TABLE ONLY public.enrollment_skips
    ADD CONSTRAINT enrollment_skips_pkey PRIMARY KEY (event_id);

--
-- Name: enrollment_timeline enrollment_timeline_pkey; Type: CONSTRAINT; Schema: public; Owner: -
--

ALTER TABLE ONLY public.enrollment_timeline
    ADD CONSTRAINT enrollment_timeline_pkey PRIMARY KEY (event_id);

--
-- Name: enrollments enrollments_pkey; Type: CONSTRAINT; Schema: public; Owner: -
--

ALTER TABLE ONLY public.enrollments
    ADD CONSTRAINT enrollments_pkey PRIMARY KEY (enrollment_id);

--
-- Name: inbound_imap_checkpoints inbound_imap_checkpoints_pkey; Type: CONSTRAINT; Schema: public; Owner: -
--

ALTER TABLE ONLY public.inbound_imap_checkpoints
    ADD CONSTRAINT inbound_imap_checkpoints_pkey PRIMARY KEY (mailbox_key);

--
-- Name: inbound_unmatched inbound_unmatched_pkey; Type: CONSTRAINT; Schema: public; Owner: -
--

ALTER TABLE ONLY public.inbound_unmatched
    ADD CONSTRAINT inbound_unmatched_pkey PRIMARY KEY (id);

--
-- Name: projection_checkpoints projection_checkpoints_pkey; Type: CONSTRAINT; Schema: public; Owner: -
--

ALTER TABLE ONLY public.projection_checkpoints
    ADD CONSTRAINT projection_checkpoints_pkey PRIMARY KEY (projection, topic, partition);

--
-- Name: replies replies_pkey; Type: CONSTRAINT; Schema: public; Owner: -
--

ALTER TABLE ONLY public.replies
    ADD CONSTRAINT replies_pkey PRIMARY KEY (event_id);

--
-- Name: timers timers_pkey; Type: CONSTRAINT; Schema: public; Owner: -
--

ALTER TABLE ONLY public.timers
    ADD CONSTRAINT timers_pkey PRIMARY KEY (enrollment_id, kind);

--
-- Name: unprojectable_events unprojectable_events_pkey; Type: CONSTRAINT; Schema: public; Owner: -
--

ALTER TABLE ONLY public.unprojectable_events
    ADD CONSTRAINT unprojectable_events_pkey PRIMARY KEY (projection, topic, partition, "offset");

--
-- Name: api_keys_by_account; Type: INDEX; Schema: public; Owner: -
--

CREATE INDEX api_keys_by_account ON public.api_keys USING btree (account_id, created_at);

--
-- Name: bulk_enrollments_campaign; Type: INDEX; Schema: public; Owner: -
--

CREATE INDEX bulk_enrollments_campaign ON public.bulk_enrollments USING btree (account_id, campaign_id, requested_at);

--
-- Name: bulk_enrollments_import; Type: INDEX; Schema: public; Owner: -
--

CREATE INDEX bulk_enrollments_import ON public.bulk_enrollments USING btree (account_id, contact_import_id);

--
-- Name: contacts_by_name; Type: INDEX; Schema: public; Owner: -
--

CREATE INDEX contacts_by_name ON public.contacts USING btree (account_id, lower(name), contact_id);

--
-- Name: decisions_command; Type: INDEX; Schema: public; Owner: -
--

CREATE INDEX decisions_command ON public.decisions USING btree (command_id);

--
-- Name: decisions_contact; Type: INDEX; Schema: public; Owner: -
--

CREATE INDEX decisions_contact ON public.decisions USING btree (account_id, contact_id, contact_version);

--
-- Name: delivery_ledger_by_recipient; Type: INDEX; Schema: public; Owner: -
--

CREATE INDEX delivery_ledger_by_recipient ON public.delivery_ledger USING btree (account_id, lower(recipient), started_at DESC) WHERE (channel = 'email'::text);

--
-- Name: delivery_ledger_sender_sends; Type: INDEX; Schema: public; Owner: -
--

CREATE INDEX delivery_ledger_sender_sends ON public.delivery_ledger USING btree (sender, started_at) WHERE (state = ANY (ARRAY['started'::text, 'sent'::text, 'unknown'::text]));

--
-- Name: enrollment_skips_bulk_enroll; Type: INDEX; Schema: public; Owner: -
--

CREATE INDEX enrollment_skips_bulk_enroll ON public.enrollment_skips USING btree (account_id, bulk_enroll_id) WHERE (bulk_enroll_id IS NOT NULL);

--
-- Name: enrollment_skips_campaign_kind; Type: INDEX; Schema: public; Owner: -
--

CREATE INDEX enrollment_skips_campaign_kind ON public.enrollment_skips USING btree (account_id, campaign_id, kind, skipped_at);

--
-- Name: enrollment_timeline_contact; Type: INDEX; Schema: public; Owner: -
--

CREATE INDEX enrollment_timeline_contact ON public.enrollment_timeline USING btree (account_id, contact_id, version);

--
-- Name: enrollment_timeline_enrollment; Type: INDEX; Schema: public; Owner: -
--

CREATE INDEX enrollment_timeline_enrollment ON public.enrollment_timeline USING btree (enrollment_id, version);

--
-- Name: enrollments_bulk_enroll; Type: INDEX; Schema: public; Owner: -
--

CREATE INDEX enrollments_bulk_enroll ON public.enrollments USING btree (account_id, bulk_enroll_id) WHERE (bulk_enroll_id IS NOT NULL);

--
-- Name: enrollments_campaign_batch_page; Type: INDEX; Schema: public; Owner: -
--

CREATE INDEX enrollments_campaign_batch_page ON public.enrollments USING btree (account_id, campaign_id, batch_number, enrolled_at, enrollment_id);

--
-- Name: enrollments_campaign_page; Type: INDEX; Schema: public; Owner: -
--

CREATE INDEX enrollments_campaign_page ON public.enrollments USING btree (account_id, campaign_id, enrolled_at, enrollment_id);

--
-- Name: enrollments_campaign_status_page; Type: INDEX; Schema: public; Owner: -
--

CREATE INDEX enrollments_campaign_status_page ON public.enrollments USING btree (account_id, campaign_id, status, enrolled_at, enrollment_id);

--
-- Name: enrollments_contact; Type: INDEX; Schema: public; Owner: -
--

CREATE INDEX enrollments_contact ON public.enrollments USING btree (account_id, contact_id);

--
-- Name: enrollments_contact_name_trgm; Type: INDEX; Schema: public; Owner: -
--

CREATE INDEX enrollments_contact_name_trgm ON public.enrollments USING gin (contact_name public.gin_trgm_ops);

--
-- Name: inbound_unmatched_account; Type: INDEX; Schema: public; Owner: -
--

CREATE INDEX inbound_unmatched_account ON public.inbound_unmatched USING btree (account_id, id);

--
-- Name: inbound_unmatched_message; Type: INDEX; Schema: public; Owner: -
--

CREATE UNIQUE INDEX inbound_unmatched_message ON public.inbound_unmatched USING btree (COALESCE(account_id, ''::text), inbound_message_id);

--
-- Name: replies_campaign; Type: INDEX; Schema: public; Owner: -
--

CREATE INDEX replies_campaign ON public.replies USING btree (account_id, campaign_id, replied_at);

--
-- Name: timers_due_unclaimed; Type: INDEX; Schema: public; Owner: -
--

CREATE INDEX timers_due_unclaimed ON public.timers USING btree (due_at) WHERE (claimed_until IS NULL);

--
-- Name: timers_lease; Type: INDEX; Schema: public; Owner: -
--

CREATE INDEX timers_lease ON public.timers USING btree (claimed_until) WHERE (claimed_until IS NOT NULL);

--
-- Name: unprojectable_events_account; Type: INDEX; Schema: public; Owner: -
--

CREATE INDEX unprojectable_events_account ON public.unprojectable_events USING btree (account_id, at);

--
-- PostgreSQL database dump complete
--
