-- The link (prev_hash) each ledgered copy of an event was sent with: '' for a chain's start, NULL for
-- rows ledgered before this migration. A processors worker that takes over a crashed one's batch sends
-- its traces again under their ids from its own session; the event tables keep one copy, so the first
-- session's chain loses those events there. `provline verify` rebuilds that chain from the ledger's
-- copies and their links (sink/verifier.py, replaced_copies). Copies ledgered before this migration
-- have no link: they only fill a gap a stored event of their session links across.
ALTER TABLE event_ledger ADD COLUMN IF NOT EXISTS prev_hash Nullable(String);
