-- Mapped steps: `map` keeps a mapped step's fan-out (on its instances too); an instance names
-- its mapped step (`map_of`), its index and its input (item or items, and index). Keep in step
-- with the other backend's 0010_map.sql.

ALTER TABLE steps ADD COLUMN map JSONB;
ALTER TABLE steps ADD COLUMN map_of BIGINT;
ALTER TABLE steps ADD COLUMN map_index BIGINT;
ALTER TABLE steps ADD COLUMN map_input JSONB;
CREATE INDEX steps_map_of_idx ON steps (map_of) WHERE map_of IS NOT NULL;
