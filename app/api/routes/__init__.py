"""Route modules: public jobs API, worker protocol, health."""
