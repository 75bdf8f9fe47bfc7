"""Pure folds from events to read-model rows; the projector writes what they return."""
