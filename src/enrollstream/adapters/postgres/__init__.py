"""PostgreSQL adapters: migrations, the projector's writes and the read models' queries."""
