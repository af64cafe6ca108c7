public enum FiltersPlaceholder {}
