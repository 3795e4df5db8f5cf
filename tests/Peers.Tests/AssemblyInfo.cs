// Peers pin lcores and share the machine's two cores: run one peer test at a time.
[assembly: CollectionBehavior(DisableTestParallelization = true)]
