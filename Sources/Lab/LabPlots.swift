import Foundation
import StrataFormatting

/// The lab's pictures as standalone SVG: one panel per policy, one line per tenant, the same axes
/// in every panel so that panels compare at a glance.
public enum LabPlots {
    static let palette = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf"]
    static let panelWidth = 360.0
    static let panelHeight = 240.0
    static let margin = (left: 62.0, right: 16.0, top: 30.0, bottom: 44.0)

    /// Latency CDF per tenant per policy, latency on a log scale.
    public static func latencyCDF(_ result: LabResult) -> String {
        let values = result.policies.flatMap { $0.tenants.flatMap { $0.cdf.map(\.0) } }.filter { $0 > 0 }
        // Below 1 us the axis would only stretch the plot: such latencies sit at its left edge.
        let low = pow(10, floor(log10(max(1, values.min() ?? 1))))
        let high = pow(10, ceil(log10(max(values.max() ?? 10, low * 10))))
        let xTicks = stride(from: log10(low), through: log10(high), by: 1).map { pow(10, $0) }
        return grid(result, title: "Latency CDF (\(result.scenario), seed \(result.seed))",
                    xLabel: "latency (us, log scale)", yLabel: "fraction of requests",
                    xTicks: xTicks.map { ($0, label($0)) }, yTicks: [0, 0.25, 0.5, 0.75, 1].map { ($0, label($0)) },
                    x: { (log10(max($0, low)) - log10(low)) / (log10(high) - log10(low)) }, y: { $0 },
                    points: { tenant in tenant.cdf.map { ($0.0, $0.1) } })
    }

    /// IOPS over time per tenant per policy.
    public static func throughput(_ result: LabResult) -> String {
        let peak = result.policies.flatMap { $0.tenants.flatMap(\.timeline) }.max() ?? 1
        let top = niceCeiling(max(peak, 1))
        let xTicks = (0...4).map { Double($0) * result.durationSeconds / 4 }
        return grid(result, title: "Throughput over time (\(result.scenario), seed \(result.seed))",
                    xLabel: "time (s)", yLabel: "IOPS", xTicks: xTicks.map { ($0, label($0)) },
                    yTicks: (0...4).map { Double($0) * top / 4 }.map { ($0, label($0)) },
                    x: { $0 / result.durationSeconds }, y: { $0 / top },
                    points: { tenant in
                        tenant.timeline.enumerated().map { (Double($0.offset) * result.intervalSeconds + result.intervalSeconds / 2, $0.element) }
                    })
    }

    private static func grid(_ result: LabResult, title: String, xLabel: String, yLabel: String,
                             xTicks: [(Double, String)], yTicks: [(Double, String)],
                             x: (Double) -> Double, y: (Double) -> Double,
                             points: (LabTenantResult) -> [(Double, Double)]) -> String {
        let columns = min(3, max(1, result.policies.count))
        let rows = (result.policies.count + columns - 1) / columns
        let legendHeight = 28.0
        let width = Double(columns) * panelWidth
        let height = 34 + legendHeight + Double(rows) * panelHeight
        var svg = """
        <svg xmlns="http://www.w3.org/2000/svg" width="\(int(width))" height="\(int(height))" viewBox="0 0 \(int(width)) \(int(height))" font-family="sans-serif" font-size="11">
        <rect width="100%" height="100%" fill="white"/>
        <text x="\(int(width / 2))" y="20" text-anchor="middle" font-size="14">\(escape(title))</text>

        """
        let tenantNames = result.policies.first?.tenants.map(\.tenant) ?? []
        for (index, name) in tenantNames.enumerated() {
            let left = 20 + Double(index) * 120
            svg += "<line x1=\"\(f(left))\" y1=\"44\" x2=\"\(f(left + 24))\" y2=\"44\" stroke=\"\(color(index))\" stroke-width=\"2.5\"/>"
            svg += "<text x=\"\(f(left + 30))\" y=\"48\">\(escape(name))</text>\n"
        }
        for (index, policy) in result.policies.enumerated() {
            let originX = Double(index % columns) * panelWidth
            let originY = 34 + legendHeight + Double(index / columns) * panelHeight
            let plotLeft = originX + margin.left
            let plotTop = originY + margin.top
            let plotWidth = panelWidth - margin.left - margin.right
            let plotHeight = panelHeight - margin.top - margin.bottom
            func px(_ value: Double) -> Double { plotLeft + min(max(x(value), 0), 1) * plotWidth }
            func py(_ value: Double) -> Double { plotTop + (1 - min(max(y(value), 0), 1)) * plotHeight }
            svg += "<text x=\"\(f(plotLeft + plotWidth / 2))\" y=\"\(f(originY + 18))\" text-anchor=\"middle\" font-size=\"12\" font-weight=\"bold\">\(escape(policy.policy))</text>\n"
            svg += "<rect x=\"\(f(plotLeft))\" y=\"\(f(plotTop))\" width=\"\(f(plotWidth))\" height=\"\(f(plotHeight))\" fill=\"none\" stroke=\"#888\"/>\n"
            for (value, text) in xTicks {
                let position = px(value)
                svg += "<line x1=\"\(f(position))\" y1=\"\(f(plotTop))\" x2=\"\(f(position))\" y2=\"\(f(plotTop + plotHeight))\" stroke=\"#eee\"/>"
                svg += "<text x=\"\(f(position))\" y=\"\(f(plotTop + plotHeight + 14))\" text-anchor=\"middle\">\(text)</text>\n"
            }
            for (value, text) in yTicks {
                let position = py(value)
                svg += "<line x1=\"\(f(plotLeft))\" y1=\"\(f(position))\" x2=\"\(f(plotLeft + plotWidth))\" y2=\"\(f(position))\" stroke=\"#eee\"/>"
                svg += "<text x=\"\(f(plotLeft - 4))\" y=\"\(f(position + 4))\" text-anchor=\"end\">\(text)</text>\n"
            }
            svg += "<text x=\"\(f(plotLeft + plotWidth / 2))\" y=\"\(f(plotTop + plotHeight + 32))\" text-anchor=\"middle\" fill=\"#444\">\(escape(xLabel))</text>\n"
            svg += "<text transform=\"translate(\(f(originX + 14)),\(f(plotTop + plotHeight / 2))) rotate(-90)\" text-anchor=\"middle\" fill=\"#444\">\(escape(yLabel))</text>\n"
            for (tenantIndex, tenant) in policy.tenants.enumerated() {
                let line = points(tenant)
                guard !line.isEmpty else { continue }
                let path = line.map { "\(f(px($0.0))),\(f(py($0.1)))" }.joined(separator: " ")
                svg += "<polyline fill=\"none\" stroke=\"\(color(tenantIndex))\" stroke-width=\"1.8\" points=\"\(path)\"/>\n"
            }
        }
        return svg + "</svg>\n"
    }

    static func color(_ index: Int) -> String { palette[index % palette.count] }

    /// 1, 2 or 5 times a power of ten, at or above `value`.
    static func niceCeiling(_ value: Double) -> Double {
        let power = pow(10, floor(log10(value)))
        for step in [1.0, 2, 5, 10] where step * power >= value { return step * power }
        return 10 * power
    }

    static func label(_ value: Double) -> String {
        if value >= 1_000_000 { return trimmed(value / 1_000_000) + "M" }
        if value >= 1000 { return trimmed(value / 1000) + "k" }
        return trimmed(value)
    }

    private static func trimmed(_ value: Double) -> String {
        var text = DecimalText.fixed(value, value < 1 ? 2 : 1)
        while text.contains("."), text.hasSuffix("0") { text.removeLast() }
        if text.hasSuffix(".") { text.removeLast() }
        return text
    }

    private static func f(_ value: Double) -> String { DecimalText.fixed(value, 1) }
    private static func int(_ value: Double) -> String { String(Int(value.rounded())) }

    private static func escape(_ text: String) -> String {
        text.replacingOccurrences(of: "&", with: "&amp;").replacingOccurrences(of: "<", with: "&lt;").replacingOccurrences(of: ">", with: "&gt;")
    }
}
