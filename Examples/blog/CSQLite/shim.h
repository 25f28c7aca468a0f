/* The system SQLite, for the blog example (apt: libsqlite3-dev). */
#include <sqlite3.h>
