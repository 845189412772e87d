-- How a table's uploaded files are applied: 'partial' stores a file's valid
-- rows and reports its bad ones; 'all_or_nothing' stores nothing from a file
-- with any bad row. Existing tables keep the behaviour they had: partial.
ALTER TABLE datasources
    ADD COLUMN import_mode text NOT NULL DEFAULT 'partial'
        CHECK (import_mode IN ('partial', 'all_or_nothing'));
