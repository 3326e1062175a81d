public enum SwiftrayVersion { public static let string = "0.1.0" }
