import Foundation
import StrataFormatting

/// The lab's figures as a text table, JSON and CSV: the same numbers in each.
public enum LabReport {
    static let columns = ["policy", "tenant", "IOPS", "MiB/s", "p50 us", "p99 us", "p99.9 us", "reservation", "limit", "spare share"]

    public static func table(_ result: LabResult) -> String {
        var rows: [[String]] = []
        for policy in result.policies {
            for tenant in policy.tenants {
                rows.append([policy.policy, tenant.tenant, fixed(tenant.iops, 0), fixed(tenant.mibPerSecond, 2), fixed(tenant.p50Us, 1),
                             fixed(tenant.p99Us, 1), fixed(tenant.p999Us, 1),
                             tenant.reservationMet.map { $0 ? "met" : "MISSED" } ?? "-",
                             tenant.limitExceeded.map { $0 ? "EXCEEDED" : "held" } ?? "-",
                             tenant.spareShare.map { fixed($0 * 100, 1) + "%" } ?? "-"])
            }
        }
        var lines = ["scenario \(result.scenario), seed \(result.seed), \(result.clock.rawValue) clock, \(fixed(result.durationSeconds, 3)) s"]
        lines += TextTable.lines(header: columns, rows: rows)
        lines.append("")
        lines += TextTable.lines(header: ["policy", "total IOPS", "Jain's index", "requests", "wall s"], rows: result.policies.map { policy in
            let completed = policy.tenants.reduce(0) { $0 + Int($1.completed) }
            return [policy.policy, fixed(policy.totalIops, 0), fixed(policy.jainIndex, 4), DecimalText.grouped(completed), fixed(policy.wallSeconds, 2)]
        })
        return lines.joined(separator: "\n") + "\n"
    }

    public static func json(_ result: LabResult) -> String {
        let policies: [OrderedJSON] = result.policies.map { policy in
            .object([
                ("policy", .string(policy.policy)), ("driver", .string(policy.driver)), ("max-in-flight", .int(Int64(policy.maxInFlight))),
                ("total-iops", .double(policy.totalIops)), ("jain-index", .double(policy.jainIndex)),
                ("tenants", .array(policy.tenants.map { tenant in
                    .object([
                        ("tenant", .string(tenant.tenant)), ("completed", .uint(tenant.completed)), ("iops", .double(tenant.iops)),
                        ("mib-per-second", .double(tenant.mibPerSecond)), ("mean-us", .double(tenant.meanUs)),
                        ("p50-us", .double(tenant.p50Us)), ("p99-us", .double(tenant.p99Us)), ("p99.9-us", .double(tenant.p999Us)),
                        ("max-us", .double(tenant.maxUs)),
                        ("reservation-met", tenant.reservationMet.map(OrderedJSON.bool) ?? .null),
                        ("limit-exceeded", tenant.limitExceeded.map(OrderedJSON.bool) ?? .null),
                        ("spare-share", tenant.spareShare.map(OrderedJSON.double) ?? .null),
                        ("iops-over-time", .array(tenant.timeline.map(OrderedJSON.double))),
                    ])
                })),
            ])
        }
        return OrderedJSON.object([
            ("scenario", .string(result.scenario)), ("seed", .uint(result.seed)), ("clock", .string(result.clock.rawValue)),
            ("duration-s", .double(result.durationSeconds)), ("interval-s", .double(result.intervalSeconds)),
            ("policies", .array(policies)),
        ]).text() + "\n"
    }

    public static func csv(_ result: LabResult) -> String {
        var lines = ["policy,tenant,completed,iops,mib_per_s,mean_us,p50_us,p99_us,p99_9_us,max_us,reservation_met,limit_exceeded,spare_share,policy_total_iops,policy_jain_index"]
        for policy in result.policies {
            for tenant in policy.tenants {
                let fields: [String] = [
                    policy.policy, tenant.tenant, String(tenant.completed), "\(tenant.iops)", "\(tenant.mibPerSecond)", "\(tenant.meanUs)",
                    "\(tenant.p50Us)", "\(tenant.p99Us)", "\(tenant.p999Us)", "\(tenant.maxUs)",
                    tenant.reservationMet.map { "\($0)" } ?? "", tenant.limitExceeded.map { "\($0)" } ?? "",
                    tenant.spareShare.map { "\($0)" } ?? "", "\(policy.totalIops)", "\(policy.jainIndex)",
                ]
                lines.append(fields.map(quoted).joined(separator: ","))
            }
        }
        return lines.joined(separator: "\n") + "\n"
    }

    private static func quoted(_ field: String) -> String {
        field.contains(where: { $0 == "," || $0 == "\"" || $0 == "\n" }) ? "\"" + field.replacingOccurrences(of: "\"", with: "\"\"") + "\"" : field
    }

    static func fixed(_ value: Double, _ digits: Int) -> String {
        value.isFinite ? DecimalText.fixed(value, digits) : "-"
    }
}
