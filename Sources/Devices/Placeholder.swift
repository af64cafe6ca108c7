public enum DevicesPlaceholder {}
