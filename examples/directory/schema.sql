-- An example member directory: users belong to companies; the view gives each user their
-- company's attributes, so a list's query can select "users of full-member companies".
-- Create it with:  python -c "import sqlite3; sqlite3.connect('var/directory.db').executescript(open('examples/directory/schema.sql').read())"
CREATE TABLE companies (id INTEGER PRIMARY KEY, name TEXT NOT NULL, membership TEXT NOT NULL, country TEXT);
CREATE TABLE users (
  id INTEGER PRIMARY KEY, email TEXT NOT NULL, email_alt TEXT, name TEXT, company_id INTEGER REFERENCES companies(id),
  role TEXT, joined DATE, receive_email BOOLEAN NOT NULL DEFAULT 1
);
CREATE VIEW member_view AS
  SELECT u.email, u.email_alt, u.name, u.role, u.joined, u.receive_email,
         c.name AS company, c.membership AS company_membership, c.country
  FROM users u LEFT JOIN companies c ON c.id = u.company_id;
INSERT INTO companies VALUES (1, 'Acme', 'full', 'NL'), (2, 'Globex', 'associate', 'DE'), (3, 'Initech', 'full', 'US');
INSERT INTO users VALUES
  (1, 'ann@acme.example', 'ann.home@example.net', 'Ann', 1, 'board', '2019-03-01', 1),
  (2, 'bo@acme.example', NULL, 'Bo', 1, 'staff', '2024-06-15', 0),
  (3, 'cy@globex.example', NULL, 'Cy', 2, 'staff', '2021-01-10', 1),
  (4, 'di@initech.example', NULL, 'Di', 3, 'board', '2022-09-30', 1);
