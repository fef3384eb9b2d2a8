import Foundation
import TestSupport
import Testing

@testable import AWSClient

@Suite struct ConfigurationTests {
    @Test func regionPrecedence() async throws {
        try await withHome { home in
            try home.write(".aws/config", "[default]\nregion = eu-central-1\n[profile dev]\nregion = ap-south-1\n")
            func region(_ environment: [String: String], flag: String? = nil, profile: String? = nil) throws -> String {
                try AWSClientConfiguration.resolve(
                    environment: environment, profile: profile, region: flag, endpointURL: nil, homeDirectory: home.path
                ).region
            }
            #expect(try region([:]) == "eu-central-1")
            #expect(try region([:], profile: "dev") == "ap-south-1")
            #expect(try region(["AWS_PROFILE": "dev"]) == "ap-south-1")
            #expect(try region(["AWS_DEFAULT_REGION": "us-west-1", "AWS_PROFILE": "dev"]) == "us-west-1")
            #expect(try region(["AWS_REGION": "us-east-2", "AWS_DEFAULT_REGION": "us-west-1"]) == "us-east-2")
            #expect(try region(["AWS_REGION": "us-east-2"], flag: "sa-east-1") == "sa-east-1")
        }
    }

    @Test func missingRegionAndProfileAreExplained() async throws {
        try await withHome { home in
            let noRegion = #expect(throws: AWSConfigurationError.self) {
                try AWSClientConfiguration.resolve(environment: [:], profile: nil, region: nil, endpointURL: nil, homeDirectory: home.path)
            }
            #expect(noRegion?.description.contains("--region") == true)
            let noProfile = #expect(throws: AWSConfigurationError.self) {
                try AWSClientConfiguration.resolve(
                    environment: ["AWS_PROFILE": "ghost"], profile: nil, region: "us-east-1", endpointURL: nil, homeDirectory: home.path)
            }
            #expect(noProfile?.description.contains("'ghost'") == true)
            #expect(noProfile?.description.contains("AWS_PROFILE") == true)
            #expect(noProfile?.description.contains("\(home.path)/.aws/config") == true)
        }
    }

    @Test func endpointPrecedence() async throws {
        try await withHome { home in
            try home.write(
                ".aws/config",
                """
                [profile local]
                endpoint_url = http://profile.example:1
                services = local-services

                [services local-services]
                ssm =
                  endpoint_url = http://services-ssm.example:2
                kms =
                  endpoint_url = http://services-kms.example:3
                """)
            func endpoints(_ environment: [String: String], flag: String? = nil) throws -> AWSServiceEndpoints {
                try AWSClientConfiguration.resolve(
                    environment: environment, profile: "local", region: "us-east-1", endpointURL: flag, homeDirectory: home.path
                ).endpoints
            }
            let fromProfile = try endpoints([:])
            #expect(fromProfile.ssm.absoluteString == "http://services-ssm.example:2")
            #expect(fromProfile.kms.absoluteString == "http://services-kms.example:3")
            #expect(fromProfile.ec2.absoluteString == "http://profile.example:1")
            let global = try endpoints(["AWS_ENDPOINT_URL": "http://global.example:4"])
            #expect(global.ssm.absoluteString == "http://services-ssm.example:2")  // service-specific beats global
            #expect(global.ec2.absoluteString == "http://global.example:4")
            let specific = try endpoints(["AWS_ENDPOINT_URL_SSM": "http://env-ssm.example:5", "AWS_ENDPOINT_URL": "http://global.example:4"])
            #expect(specific.ssm.absoluteString == "http://env-ssm.example:5")
            let flag = try endpoints(["AWS_ENDPOINT_URL_SSM": "http://env-ssm.example:5"], flag: "http://127.0.0.1:4587")
            #expect(flag.ssm.absoluteString == "http://127.0.0.1:4587")
            #expect(flag.ec2.absoluteString == "http://profile.example:1")  // --endpoint-url is for SSM only
            let ignored = try endpoints(["AWS_IGNORE_CONFIGURED_ENDPOINT_URLS": "true", "AWS_ENDPOINT_URL": "http://x:1"])
            #expect(ignored.ssm.absoluteString == "https://ssm.us-east-1.amazonaws.com")
            #expect(throws: AWSConfigurationError.self) { try endpoints([:], flag: "not a url") }
        }
        let china = AWSServiceEndpoints.defaults(region: "cn-north-1")
        #expect(china.ssm.absoluteString == "https://ssm.cn-north-1.amazonaws.com.cn")
        #expect(AWSServiceEndpoints.defaults(region: "eu-west-1").ssoPortal(region: "us-east-2").absoluteString
            == "https://portal.sso.us-east-2.amazonaws.com")
    }

    @Test func descriptionsHideTheEnvironment() async throws {
        try await withHome { home in
            let config = try AWSClientConfiguration.resolve(
                environment: ["AWS_SECRET_ACCESS_KEY": "hidden-secret", "AWS_ACCESS_KEY_ID": "A"], profile: nil,
                region: "us-east-1", endpointURL: nil, homeDirectory: home.path)
            var dumped = ""
            dump(config, to: &dumped)
            #expect(!dumped.contains("hidden-secret"))
            #expect(!"\(config)".contains("hidden-secret"))
            #expect(!String(reflecting: config).contains("hidden-secret"))
        }
    }

    @Test func iniParsing() throws {
        let sections = try INIParser.parse(
            "# top\n[profile a]\nKey = v1\nother: v2\n; note\ns3 =\n  addressing_style = path\n\tmax = 3\n[b]\nx=\n", file: "f")
        #expect(sections.map(\.name) == ["profile a", "b"])
        #expect(sections[0].values["key"] == "v1")
        #expect(sections[0].values["other"] == "v2")
        #expect(sections[0].nested["s3"] == ["addressing_style": "path", "max": "3"])
        #expect(sections[1].values["x"] == "")
        #expect(throws: AWSConfigurationError.self) { try INIParser.parse("key = before-section\n", file: "f") }
    }

    @Test func xmlParsing() throws {
        let xml = #"<?xml version="1.0"?><R a="x>y"><e>a &amp; b &#65;</e><![CDATA[]]><n/><e><![CDATA[<raw&>]]></e></R>"#
        let root = try XMLNode.parse(Array(xml.utf8))
        #expect(root.name == "R")
        #expect(root.children("e").map(\.text) == ["a & b A", "<raw&>"])
        #expect(root.child("n") != nil)
        #expect(throws: XMLParseError.self) { try XMLNode.parse(Array("<a><b></a>".utf8)) }
    }
}
