// Intentionally empty: this module exists for its link flags (see module.modulemap).
static inline int swiftray_embed_linked(void) { return 1; }
