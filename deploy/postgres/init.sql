-- Runs once, when the postgres container initialises an empty data volume.
-- Each service owns its own database (docs/architecture.md); `clinic db upgrade` creates the tables.
CREATE DATABASE booking;
CREATE DATABASE forms;
CREATE DATABASE notify;
