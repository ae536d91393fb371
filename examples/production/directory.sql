-- A small member database to try examples/production with (sqlite3 var/crm.db < directory.sql).
-- The engine reads only the view list_members; in production it is a view over the membership system.
CREATE TABLE people (
  id INTEGER PRIMARY KEY, email TEXT NOT NULL, email_private TEXT, name TEXT, membership TEXT NOT NULL,
  region TEXT, member_since DATE, dues_paid_until DATE, newsletter BOOLEAN NOT NULL DEFAULT 1
);
CREATE VIEW list_members AS
  SELECT email, email_private, name, membership, region, member_since, dues_paid_until, newsletter FROM people;
INSERT INTO people VALUES
  (1, 'ann@example.net', 'ann@home.example', 'Ann', 'full', 'north', '2015-04-01', '2099-12-31', 1),
  (2, 'bo@example.com', NULL, 'Bo', 'associate', 'south', '2020-01-15', '2099-12-31', 1),
  (3, 'cy@corp.example', NULL, 'Cy', 'full', 'east', '2018-09-30', '2099-12-31', 0),
  (4, 'di@example.net', NULL, 'Di', 'honorary', 'west', '2001-06-01', '2099-12-31', 1),
  (5, 'ed@example.com', NULL, 'Ed', 'full', 'north', '2019-02-11', '2000-01-01', 1);
