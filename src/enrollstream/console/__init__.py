"""The Enrollments console (seeds 000, 003, 004; docs/console.md): server-rendered pages under /console,
served by the API's application. `enrollstream.console.app.create_console` builds it."""
