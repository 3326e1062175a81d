import Testing
import Runtime

@Suite struct ResourceSetBoundsTests {
  @Test func aPeersQuantitiesAreCheckedBeforeAnyArithmetic() throws {
    #expect(try ResourceSet.checked(fixedPoint: ["CPU": 20_000, "memory": ResourceSet.maxQuantity], field: "resources")["CPU"] == 20_000)
    for bad: [String: Int64] in [["CPU": -1], ["CPU": .min], ["CPU": ResourceSet.maxQuantity + 1], ["": 1],
                                 [String(repeating: "x", count: 257): 1]] {
      do {
        _ = try ResourceSet.checked(fixedPoint: bad, field: "bundle 3")
        Issue.record("accepted \(bad)")
      } catch {
        #expect(error.code == .invalidArgument && error.message.hasPrefix("bundle 3"))
      }
    }
  }

  @Test func sumsAndDifferencesSaturateInsteadOfTrapping() {
    let most = ResourceSet(fixedPoint: ["CPU": .max]), least = ResourceSet(fixedPoint: ["CPU": .min])
    #expect((most + most)["CPU"] == .max)
    #expect((least - most)["CPU"] == .min)
    #expect((most - least)["CPU"] == .max)
    #expect((ResourceSet(units: ["CPU": 1.5]) - ResourceSet(units: ["CPU": 0.5]))["CPU"] == 10_000, "exact as before")
  }

  @Test func inPlaceSumsAndDifferencesChangeOnlyTheNamesGivenAndDropWhatReachesZero() {
    var s = ResourceSet(fixedPoint: ["CPU": 20_000, "GPU": 10_000, "memory": 5])
    s -= ResourceSet(fixedPoint: ["CPU": 5_000, "GPU": 10_000])
    #expect(s.quantities == ["CPU": 15_000, "memory": 5], "GPU at 0 leaves")
    s += ResourceSet(fixedPoint: ["GPU": 10_000, "custom": 1])
    #expect(s.quantities == ["CPU": 15_000, "memory": 5, "GPU": 10_000, "custom": 1])
    s -= ResourceSet(fixedPoint: ["CPU": 20_000])
    #expect(s["CPU"] == -5_000, "below nothing, as `-` gives")
    #expect(s - ResourceSet(fixedPoint: ["memory": 5]) == ResourceSet(fixedPoint: ["CPU": -5_000, "GPU": 10_000, "custom": 1]))
    var most = ResourceSet(fixedPoint: ["CPU": .max])
    most += most
    #expect(most["CPU"] == .max, "saturates as `+` does")
    most -= ResourceSet(fixedPoint: ["CPU": .min])
    #expect(most["CPU"] == .max)
  }

  @Test func unitsThatAreNotFiniteOrTooLargeAreClamped() {
    #expect(ResourceSet(units: ["CPU": .infinity])["CPU"] == ResourceSet.maxQuantity)
    #expect(ResourceSet(units: ["CPU": -1e300])["CPU"] == -ResourceSet.maxQuantity)
    #expect(ResourceSet(units: ["CPU": .nan])["CPU"] == 0)
  }
}
