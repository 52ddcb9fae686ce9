// Pulumi Cloud audit logs -> Microsoft Sentinel: everything the connector needs in Azure.
//
// Deploy into the resource group that will hold the connector (Function App, storage, Key Vault,
// identity, DCR, Application Insights and its telemetry workspace). The Log Analytics workspace
// that Sentinel uses must already exist; it may live in another resource group of the same
// subscription (workspaceResourceGroupName).
//
//   az deployment group create -g <rg> -f infra/main.bicep -p infra/main.bicepparam
//
// Order: the tables first, then the DCR, storage, vault, roles and the Function App, then the
// Sentinel rules and content last. A rule failing because a new table is not visible yet stops
// nothing else, and running the same command again is safe (every resource is overwritten, the
// saved searches with etag '*'). docs/DEPLOY.md has the whole path.
//
// Nothing here reads or outputs a storage key: the storage account refuses shared keys and every
// connection (host storage, deployment package, checkpoint tables, DCR, App Insights, Key Vault)
// uses the user-assigned managed identity. The Pulumi tokens live in Key Vault only: the app reads
// each org's token from there at run time (PULUMI_TOKEN_VAULT_URL), never from its app settings.

targetScope = 'resourceGroup'

// ----------------------------------------------------------------------------------------------
// Parameters
// ----------------------------------------------------------------------------------------------

@description('Name of the existing Log Analytics workspace (the one Microsoft Sentinel uses).')
param workspaceName string

@description('Resource group of the workspace; defaults to the deployment resource group.')
param workspaceResourceGroupName string = resourceGroup().name

@description('Pulumi organizations to collect audit logs from.')
@minLength(1)
param pulumiOrgs array

@description('A Pulumi token that reads the audit logs of every org without a token of its own; stored in Key Vault only, as secret pulumi-access-token. Empty (the default) writes no secret, so a redeploy leaves a rotated token alone.')
@secure()
param pulumiAccessToken string = ''

@description('Each org\'s own token (an organization access token), as { \'<org>\': \'<token>\' }; stored in Key Vault only, as secret pulumi-token-<org> (lowercase, \'_\' and \'.\' as \'-\'). Each entry writes a new secret version: leave it empty on redeploys, or set the secrets with az keyvault secret set instead (docs/DEPLOY.md).')
@secure()
param pulumiOrgTokens object = {}

@description('Region of the Function App, storage, Key Vault and Application Insights (must offer Flex Consumption). The DCR always goes to the workspace region.')
param location string = resourceGroup().location

@description('Pulumi Cloud API base URL (self-hosted Pulumi Cloud uses its own).')
param pulumiApiUrl string = 'https://api.pulumi.com'

@description('NCRONTAB schedule (6 fields) of the polling timer.')
param timerSchedule string = '0 * * * * *'

@description('How far back the first run of a new org starts (s, m, h or d suffix).')
param initialLookback string = '1d'

@description('How far back every poll re-reads to catch events the API shows late.')
param lateEventOverlap string = '10m'

@description('A run stops cleanly after this long and resumes on the next run.')
param runTimeBudget string = '8m'

@description('How many orgs a run collects at once, each on its own lease and cursor.')
@minValue(1)
@maxValue(32)
param maxParallelOrgs int = 4

@description('How many lanes (parts of the range) a backfill of one org reads at once.')
@minValue(1)
@maxValue(16)
param backfillParallelism int = 4

@description('Interactive (Analytics) retention of the PulumiAuditLogs_CL and PulumiAuditConnectorHealth_CL tables, in days.')
@minValue(4)
@maxValue(730)
param tableRetentionInDays int = 90

@description('Total retention (interactive + long-term) of the PulumiAuditLogs_CL and PulumiAuditConnectorHealth_CL tables, in days.')
@minValue(4)
@maxValue(4383)
param tableTotalRetentionInDays int = 365

@description('Create the Microsoft Sentinel scheduled analytic rules.')
param deployAnalyticRules bool = true

@description('Create the connector health rules (failing organization, lag, dead letters, connector down, no data).')
param deployHealthRules bool = true

@description('Show the connector on the Sentinel Data connectors page.')
param deployDataConnector bool = true

@description('Create the Pulumi audit workbook (Sentinel > Workbooks).')
param deployWorkbook bool = true

@description('Create the ASIM Audit Event parser, the workspace function vimAuditEventPulumiCloud.')
param deployAsimParser bool = true

@description('Create the hunting queries (Sentinel > Hunting).')
param deployHuntingQueries bool = true

@description('Onboard Microsoft Sentinel on the workspace. Leave false when Sentinel is already enabled there.')
param onboardSentinel bool = false

@description('Prefix of the resource names and key of this copy\'s Connector Down rule; change it to deploy a second copy into the same resource group or workspace. The tables and the other Sentinel content are shared by every copy in the workspace (docs/DEPLOY.md).')
@minLength(3)
@maxLength(20)
param baseName string = 'pulumi-audit'

@description('Memory of each Flex Consumption instance, in MB; the bill is this size times the seconds the app runs. docs/COST.md says why 512 is enough.')
@allowed([
  512
  2048
  4096
])
param instanceMemoryMB int = 512

@description('Daily cap of the Application Insights telemetry workspace, in GB (a decimal number as a string). Telemetry stops for the rest of the day when it is reached; the health table in Sentinel does not.')
param telemetryDailyCapGb string = '0.1'

@description('Tags applied to every resource this template creates.')
param tags object = {}

// ----------------------------------------------------------------------------------------------
// Names and constants
// ----------------------------------------------------------------------------------------------

var suffix = uniqueString(resourceGroup().id, baseName)
var identityName = 'id-${baseName}'
var storageAccountName = take('stpal${suffix}', 24)
var keyVaultName = take('kv-pal-${suffix}', 24)
var appInsightsName = 'appi-${baseName}-${suffix}'
var telemetryWorkspaceName = 'log-${baseName}-${suffix}'
var planName = 'plan-${baseName}-${suffix}'
var functionAppName = 'func-${baseName}-${suffix}'
// A kind Direct DCR gets its own DNS endpoint, and its name may have at most 30 characters: 16 of
// the prefix, '-', and the 13 of suffix (which is keyed by baseName, so the name stays unique).
var dcrNamePrefix = take('dcr-${baseName}', 16)
var dcrName = '${dcrNamePrefix}-${suffix}'

var tableName = 'PulumiAuditLogs_CL'
var healthTableName = 'PulumiAuditConnectorHealth_CL'
var deploymentContainerName = 'app-package'
var checkpointTableName = 'PulumiAuditCheckpoints'
var deadLetterTableName = 'PulumiAuditDeadLetters'
// The secret names shared/token_source.py reads: pulumi-token-<org>, else the shared one.
var sharedTokenSecretName = 'pulumi-access-token'
var orgTokenSecretPrefix = 'pulumi-token-'

// ----------------------------------------------------------------------------------------------
// Existing workspace and its custom tables (the rules and Sentinel content come last, at the end)
// ----------------------------------------------------------------------------------------------

resource workspace 'Microsoft.OperationalInsights/workspaces@2023-09-01' existing = {
  name: workspaceName
  scope: resourceGroup(workspaceResourceGroupName)
}

module tables 'modules/tables.bicep' = {
  name: '${baseName}-tables'
  scope: resourceGroup(workspaceResourceGroupName)
  params: {
    workspaceName: workspaceName
    tableRetentionInDays: tableRetentionInDays
    tableTotalRetentionInDays: tableTotalRetentionInDays
  }
}

// ----------------------------------------------------------------------------------------------
// Identity
// ----------------------------------------------------------------------------------------------

resource identity 'Microsoft.ManagedIdentity/userAssignedIdentities@2023-01-31' = {
  name: identityName
  location: location
  tags: tags
}

// ----------------------------------------------------------------------------------------------
// Data collection rule: the Logs Ingestion API entry point (kind Direct => own ingestion endpoint)
// ----------------------------------------------------------------------------------------------

module dcr 'modules/dcr.bicep' = {
  name: '${baseName}-dcr'
  params: {
    name: dcrName
    // A module parameter may come from the existing workspace at run time; a resource's own
    // location may not (ARM allows reference() only inside properties).
    location: workspace.location
    workspaceResourceId: workspace.id
    outputStream: 'Custom-${tableName}'
    healthOutputStream: 'Custom-${healthTableName}'
    tags: tags
  }
  dependsOn: [
    // The output tables must exist before the DCR, or the DCR is rejected (InvalidOutputTable).
    tables
  ]
}

// ----------------------------------------------------------------------------------------------
// Storage: Functions host storage, Flex deployment package, checkpoint and dead-letter tables
// ----------------------------------------------------------------------------------------------

resource storage 'Microsoft.Storage/storageAccounts@2023-05-01' = {
  // checkov:skip=CKV_AZURE_43:checkov cannot evaluate the Bicep variable; the name is 'stpal' + uniqueString() = 18 lowercase letters and digits (tests/test_infra.py checks it).
  // checkov:skip=CKV_AZURE_206:Holds only re-creatable state (deployment package, host locks, a checkpoint the connector can rebuild with INITIAL_LOOKBACK); LRS is enough and available in every Flex region.
  // checkov:skip=CKV_AZURE_35:The Flex Consumption app is not VNet-integrated, so it reaches this account over the public endpoint; access needs Entra ID (shared keys are disabled).
  // checkov:skip=CKV_AZURE_59:Same reason as CKV_AZURE_35: the app reaches the account over its public endpoint; anonymous and key access are both off.
  name: storageAccountName
  location: location
  tags: tags
  kind: 'StorageV2'
  sku: {
    name: 'Standard_LRS'
  }
  properties: {
    minimumTlsVersion: 'TLS1_2'
    supportsHttpsTrafficOnly: true
    allowBlobPublicAccess: false
    allowSharedKeyAccess: false
    defaultToOAuthAuthentication: true
    allowCrossTenantReplication: false
    isLocalUserEnabled: false
    isSftpEnabled: false
    publicNetworkAccess: 'Enabled'
    networkAcls: {
      defaultAction: 'Allow'
      bypass: 'AzureServices'
    }
    encryption: {
      keySource: 'Microsoft.Storage'
      services: {
        blob: {
          enabled: true
        }
        table: {
          enabled: true
        }
      }
    }
  }
}

resource blobService 'Microsoft.Storage/storageAccounts/blobServices@2023-05-01' = {
  parent: storage
  name: 'default'
}

resource deploymentContainer 'Microsoft.Storage/storageAccounts/blobServices/containers@2023-05-01' = {
  parent: blobService
  name: deploymentContainerName
  properties: {
    publicAccess: 'None'
  }
}

resource tableService 'Microsoft.Storage/storageAccounts/tableServices@2023-05-01' = {
  parent: storage
  name: 'default'
}

resource checkpointTable 'Microsoft.Storage/storageAccounts/tableServices/tables@2023-05-01' = {
  parent: tableService
  name: checkpointTableName
}

resource deadLetterTable 'Microsoft.Storage/storageAccounts/tableServices/tables@2023-05-01' = {
  parent: tableService
  name: deadLetterTableName
}

// ----------------------------------------------------------------------------------------------
// Key Vault: holds the Pulumi tokens, one secret per org (else the shared one); the app reads the
// newest version of each at run time and caches it at most 5 minutes
// ----------------------------------------------------------------------------------------------

resource keyVault 'Microsoft.KeyVault/vaults@2023-07-01' = {
  // checkov:skip=CKV_AZURE_109:The Flex app is not VNet-integrated, so it reads its secrets over the public endpoint; 'trusted services' does not cover it. Access is RBAC-only.
  // checkov:skip=CKV_AZURE_189:Same reason as CKV_AZURE_109: the Flex app is not VNet-integrated, so the vault must stay reachable; only the app identity can read secrets.
  name: keyVaultName
  location: location
  tags: tags
  properties: {
    tenantId: subscription().tenantId
    sku: {
      family: 'A'
      name: 'standard'
    }
    enableRbacAuthorization: true
    enableSoftDelete: true
    softDeleteRetentionInDays: 90
    enablePurgeProtection: true
    publicNetworkAccess: 'Enabled'
    networkAcls: {
      defaultAction: 'Allow'
      bypass: 'AzureServices'
    }
  }
}

resource sharedTokenSecret 'Microsoft.KeyVault/vaults/secrets@2023-07-01' = if (!empty(pulumiAccessToken)) {
  // checkov:skip=CKV_AZURE_41:The token's lifetime is set in Pulumi Cloud, not here; rotation adds a new secret version (docs/DEPLOY.md) and the connector-silent rule flags an expired token.
  // checkov:skip=CKV_AZURE_114:checkov does not read the properties of a conditional resource; contentType is 'text/plain' (tests/test_infra.py checks it).
  parent: keyVault
  name: sharedTokenSecretName
  properties: {
    value: pulumiAccessToken
    contentType: 'text/plain'
    attributes: {
      enabled: true
    }
  }
}

resource orgTokenSecrets 'Microsoft.KeyVault/vaults/secrets@2023-07-01' = [for org in items(pulumiOrgTokens): {
  // checkov:skip=CKV_AZURE_41:Same as the shared token: each org token's lifetime is set in Pulumi Cloud; rotation adds a new secret version.
  parent: keyVault
  name: '${orgTokenSecretPrefix}${replace(replace(toLower(org.key), '_', '-'), '.', '-')}'
  properties: {
    value: org.value
    contentType: 'text/plain'
    attributes: {
      enabled: true
    }
  }
}]

// ----------------------------------------------------------------------------------------------
// Application Insights (workspace-based, Entra ID ingestion only) in a workspace of its own: the
// app's telemetry is billed at Log Analytics rates, not Sentinel's, and a daily cap bounds it
// without touching the Sentinel workspace. host.json samples it and keeps only warnings and the
// connector's own lines.
// ----------------------------------------------------------------------------------------------

resource telemetryWorkspace 'Microsoft.OperationalInsights/workspaces@2023-09-01' = {
  name: telemetryWorkspaceName
  location: location
  tags: tags
  properties: {
    sku: {
      name: 'PerGB2018'
    }
    retentionInDays: 30
    workspaceCapping: {
      dailyQuotaGb: json(telemetryDailyCapGb)
    }
  }
}

resource appInsights 'Microsoft.Insights/components@2020-02-02' = {
  name: appInsightsName
  location: location
  tags: tags
  kind: 'web'
  properties: {
    Application_Type: 'web'
    WorkspaceResourceId: telemetryWorkspace.id
    DisableLocalAuth: true
  }
}

// ----------------------------------------------------------------------------------------------
// Role assignments for the managed identity (one module, each scoped to a single resource)
// ----------------------------------------------------------------------------------------------

module roles 'modules/roles.bicep' = {
  name: '${baseName}-role-assignments'
  params: {
    principalId: identity.properties.principalId
    dcrName: dcr.outputs.name
    storageAccountName: storage.name
    keyVaultName: keyVault.name
    appInsightsName: appInsights.name
  }
}

// ----------------------------------------------------------------------------------------------
// Function App on Flex Consumption
// ----------------------------------------------------------------------------------------------

resource plan 'Microsoft.Web/serverfarms@2024-04-01' = {
  // checkov:skip=CKV_AZURE_225:Zone redundancy needs always-ready instances; a 5-minute poller that resumes from its checkpoint tolerates a zone outage.
  name: planName
  location: location
  tags: tags
  kind: 'functionapp'
  sku: {
    tier: 'FlexConsumption'
    name: 'FC1'
  }
  properties: {
    reserved: true
  }
}

resource functionApp 'Microsoft.Web/sites@2024-04-01' = {
  // checkov:skip=CKV_AZURE_17:Timer-triggered only; no client calls the app, so client certificates add nothing.
  // checkov:skip=CKV_AZURE_222:'func azure functionapp publish' needs the public scm endpoint; the app has no HTTP functions to expose.
  // checkov:skip=CKV_AZURE_213:Health check pings an HTTP path; a timer-only app has none (the connector-silent rule watches it instead).
  // checkov:skip=CKV_AZURE_212:Flex Consumption starts instances on demand; a timer-only poller runs on one instance at a time and resumes from its checkpoint.
  // checkov:skip=CKV_AZURE_78:Flex Consumption has no FTP at all, and rejects a site that sets siteConfig.ftpsState (tests/test_infra.py checks it is absent).
  name: functionAppName
  location: location
  tags: tags
  kind: 'functionapp,linux'
  identity: {
    type: 'UserAssigned'
    userAssignedIdentities: {
      '${identity.id}': {}
    }
  }
  properties: {
    serverFarmId: plan.id
    httpsOnly: true
    siteConfig: {
      minTlsVersion: '1.2'
      scmMinTlsVersion: '1.2'
      http20Enabled: true
      appSettings: [
        // Host storage, identity-based (no connection string; the account refuses shared keys).
        {
          name: 'AzureWebJobsStorage__accountName'
          value: storage.name
        }
        {
          name: 'AzureWebJobsStorage__credential'
          value: 'managedidentity'
        }
        {
          name: 'AzureWebJobsStorage__clientId'
          value: identity.properties.clientId
        }
        // Telemetry with Entra ID auth (local auth is disabled on the component).
        {
          name: 'APPLICATIONINSIGHTS_CONNECTION_STRING'
          value: appInsights.properties.ConnectionString
        }
        {
          name: 'APPLICATIONINSIGHTS_AUTHENTICATION_STRING'
          value: 'ClientId=${identity.properties.clientId};Authorization=AAD'
        }
        // The connector's own settings (shared/settings.py SETTING_SPECS).
        {
          name: 'PULUMI_ORGS'
          value: join(pulumiOrgs, ',')
        }
        {
          name: 'PULUMI_TOKEN_VAULT_URL'
          value: keyVault.properties.vaultUri
        }
        {
          name: 'PULUMI_API_URL'
          value: pulumiApiUrl
        }
        {
          name: 'LOGS_INGESTION_ENDPOINT'
          value: dcr.outputs.logsIngestionEndpoint
        }
        {
          name: 'DCR_IMMUTABLE_ID'
          value: dcr.outputs.immutableId
        }
        {
          name: 'DCR_STREAM_NAME'
          value: dcr.outputs.streamName
        }
        {
          name: 'DCR_HEALTH_STREAM_NAME'
          value: dcr.outputs.healthStreamName
        }
        {
          name: 'MANAGED_IDENTITY_CLIENT_ID'
          value: identity.properties.clientId
        }
        {
          name: 'CHECKPOINT_TABLE_ENDPOINT'
          value: storage.properties.primaryEndpoints.table
        }
        {
          name: 'CHECKPOINT_TABLE_NAME'
          value: checkpointTable.name
        }
        {
          name: 'DEAD_LETTER_TABLE_NAME'
          value: deadLetterTable.name
        }
        {
          name: 'TIMER_SCHEDULE'
          value: timerSchedule
        }
        {
          name: 'INITIAL_LOOKBACK'
          value: initialLookback
        }
        {
          name: 'LATE_EVENT_OVERLAP'
          value: lateEventOverlap
        }
        {
          name: 'RUN_TIME_BUDGET'
          value: runTimeBudget
        }
        {
          name: 'MAX_PARALLEL_ORGS'
          value: string(maxParallelOrgs)
        }
        {
          name: 'BACKFILL_PARALLELISM'
          value: string(backfillParallelism)
        }
      ]
    }
    functionAppConfig: {
      deployment: {
        storage: {
          type: 'blobContainer'
          value: '${storage.properties.primaryEndpoints.blob}${deploymentContainer.name}'
          authentication: {
            type: 'UserAssignedIdentity'
            userAssignedIdentityResourceId: identity.id
          }
        }
      }
      scaleAndConcurrency: {
        maximumInstanceCount: 40
        instanceMemoryMB: instanceMemoryMB
      }
      runtime: {
        name: 'python'
        version: '3.11'
      }
    }
  }
  dependsOn: [
    // Grant the identity its roles first, so the first start can read storage and the Key Vault secrets.
    roles
  ]
}

// ----------------------------------------------------------------------------------------------
// Sentinel onboarding, rules and content, last: a rule's query is validated when the rule is
// created, and a table created minutes before is then more likely to be visible. A failure here
// leaves the connector delivering; rerun the deployment (docs/DEPLOY.md).
// ----------------------------------------------------------------------------------------------

module workspaceContent 'modules/workspace.bicep' = {
  name: '${baseName}-workspace-content'
  scope: resourceGroup(workspaceResourceGroupName)
  params: {
    workspaceName: workspaceName
    deployAnalyticRules: deployAnalyticRules
    deployHealthRules: deployHealthRules
    pulumiOrgs: pulumiOrgs
    onboardSentinel: onboardSentinel
    baseName: baseName
  }
  dependsOn: [
    tables
    functionApp
  ]
}

module sentinelContent 'modules/sentinel-content.bicep' = {
  name: '${baseName}-sentinel-content'
  scope: resourceGroup(workspaceResourceGroupName)
  params: {
    workspaceName: workspaceName
    location: workspace.location
    deployDataConnector: deployDataConnector
    deployWorkbook: deployWorkbook
    deployAsimParser: deployAsimParser
    deployHuntingQueries: deployHuntingQueries
  }
  dependsOn: [
    // The tables, and Sentinel onboarding (in workspaceContent), come first.
    tables
    workspaceContent
  ]
}

// ----------------------------------------------------------------------------------------------
// Outputs: what `func publish` and a local.settings.json need. No secret is ever output.
// ----------------------------------------------------------------------------------------------

output functionAppName string = functionApp.name
output LOGS_INGESTION_ENDPOINT string = dcr.outputs.logsIngestionEndpoint
output DCR_IMMUTABLE_ID string = dcr.outputs.immutableId
output DCR_STREAM_NAME string = dcr.outputs.streamName
output DCR_HEALTH_STREAM_NAME string = dcr.outputs.healthStreamName
output CHECKPOINT_TABLE_ENDPOINT string = storage.properties.primaryEndpoints.table
output CHECKPOINT_TABLE_NAME string = checkpointTable.name
output DEAD_LETTER_TABLE_NAME string = deadLetterTable.name
output MANAGED_IDENTITY_CLIENT_ID string = identity.properties.clientId
output PULUMI_TOKEN_VAULT_URL string = keyVault.properties.vaultUri
output keyVaultName string = keyVault.name
output storageAccountName string = storage.name
output dcrName string = dcr.outputs.name
