public enum NodesPlaceholder {}
