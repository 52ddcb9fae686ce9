// Parameters for infra/main.bicep. Edit the values below, then:
//   export PULUMI_AUDIT_TOKEN='pul-...'   # org-scoped service token with audit-log read access
//   az deployment group create -g <rg> -f infra/main.bicep -p infra/main.bicepparam
// The token is read from the environment at deploy time; never write it into this file.
using './main.bicep'

param workspaceName = 'my-sentinel-workspace'

// Uncomment if the workspace lives in another resource group of the same subscription.
// param workspaceResourceGroupName = 'my-sentinel-rg'

param pulumiOrgs = [
  'my-pulumi-org'
]

// A variable other than PULUMI_ACCESS_TOKEN, so a personal CLI token is never picked up by mistake.
param pulumiAccessToken = readEnvironmentVariable('PULUMI_AUDIT_TOKEN')

param pulumiApiUrl = 'https://api.pulumi.com'

// Every minute (NCRONTAB, 6 fields); each run reads only what is new since the checkpoint.
param timerSchedule = '0 * * * * *'

param initialLookback = '1d'

param tableRetentionInDays = 90

param tableTotalRetentionInDays = 365

param deployAnalyticRules = true

// The connector's health rules, Data connectors page entry, workbook, ASIM parser and hunting queries.
param deployHealthRules = true
param deployDataConnector = true
param deployWorkbook = true
param deployAsimParser = true
param deployHuntingQueries = true

// Set to true only if Microsoft Sentinel is not enabled on the workspace yet.
param onboardSentinel = false
